"""python -m mnist_zoo: see mnist_zoo/cli.py."""

from mnist_zoo.launch import run

run("mnist_zoo.cli")
