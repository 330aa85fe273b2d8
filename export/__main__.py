"""python -m export --help"""

from mnist_zoo.launch import run

run("export.cli")
