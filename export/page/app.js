/*
 * app.js: the draw-a-digit page. Draw on the pad (pointer events: mouse, touch, pen), or drop or choose an
 * image; the page shows the 28x28 image the model receives, the predicted digit and ten probability bars,
 * updated as you draw. Query parameters: ?model=NAME (the model shown first), ?threads=N (wasm threads,
 * default 1; more than one needs a cross-origin isolated page, which `python -m export serve` gives).
 *
 * For scripts and tests: after every prediction #digit's text is the digit and its data-probabilities a JSON
 * array of 10 numbers (data-source: "pad" or the file's name); <html data-model> names the model once it is
 * loaded; window.mnistZoo.model is predict.js's Model, and mnistZoo.busy is false once the input is read.
 */
import { loadModel, NoDigit, predict } from "./predict.js";

const $ = (selector) => document.querySelector(selector);
const [pad, preview, digit, status] = ["#pad", "#preview", "#digit", "#status"].map($);
const [picker, bars] = ["#model", "#bars"].map($);
const ink = pad.getContext("2d", { willReadFrequently: true });
// Strokes about as thick, for the size of the pad, as MNIST's pen was for its digits.
Object.assign(ink, { lineWidth: pad.width / 14, lineCap: "round", lineJoin: "round", strokeStyle: "#000" });
const params = new URLSearchParams(location.search);
// One wasm thread unless asked: at batch 1 a second one made every model slower (bench/test_web.py).
const threads = Number(params.get("threads")) || 1;
const loaded = new Map(); // file -> Model
const state = { model: null, name: "", hint: "", source: null, sourceName: "", busy: false, again: false };
window.mnistZoo = state;

for (let d = 0; d < 10; d++) {
  const bar = `<li><span>${d}</span><div class="bar"><div></div></div><output>–</output></li>`;
  bars.insertAdjacentHTML("beforeend", bar);
}

function clearPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
}

// --- drawing ----------------------------------------------------------------------------------------------
let last = null;
const at = (e) => {
  const r = pad.getBoundingClientRect();
  return [((e.clientX - r.left) * pad.width) / r.width, ((e.clientY - r.top) * pad.height) / r.height];
};
function line(a, b) {
  ink.beginPath();
  ink.moveTo(...a);
  ink.lineTo(...b);
  ink.stroke();
}
pad.addEventListener("pointerdown", (e) => {
  pad.setPointerCapture(e.pointerId);
  last = at(e);
  line(last, last);
  use(pad, "pad");
});
pad.addEventListener("pointermove", (e) => {
  if (!last) return;
  for (const event of e.getCoalescedEvents?.() ?? [e]) {
    const p = at(event);
    line(last, p);
    last = p;
  }
  update();
});
for (const type of ["pointerup", "pointercancel"]) pad.addEventListener(type, () => (last = null));
$("#clear").addEventListener("click", () => {
  clearPad();
  use(null, "");
});

// --- image files, chosen or dropped on the pad: the model reads the file's own pixels ----------------------
$("#file").addEventListener("change", (e) => {
  if (e.target.files[0]) openFile(e.target.files[0]);
  e.target.value = ""; // choosing the same file again is a change too
});
pad.addEventListener("dragover", (e) => e.preventDefault());
pad.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files[0]) openFile(e.dataTransfer.files[0]);
});
async function openFile(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    return show(null, `${file.name}: not an image this browser can read`);
  }
  clearPad();
  const s = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
  ink.imageSmoothingEnabled = s < 1; // a small digit is shown in sharp blocks
  const [w, h] = [bitmap.width * s, bitmap.height * s];
  ink.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  ink.imageSmoothingEnabled = true;
  use(bitmap, file.name);
}

// --- predictions: one at a time; what arrives meanwhile is read right after ------------------------------
function use(source, name) {
  [state.source, state.sourceName] = [source, name];
  update();
}
async function update() {
  if (state.busy) return void (state.again = true);
  state.busy = true;
  try {
    do {
      state.again = false;
      const { model, source, sourceName } = state;
      if (!model) break; // read as soon as the model is loaded
      try {
        show(source && (await predict(model, source)), source ? "" : state.hint, sourceName);
      } catch (e) {
        if (!(e instanceof NoDigit)) throw e;
        show(null, e.message);
      }
    } while (state.again);
  } catch (e) {
    show(null, `error: ${e.message}`);
  } finally {
    state.busy = false;
  }
}

function show(result, note, sourceName = "") {
  const pixels = preview.getContext("2d").createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const v = result ? result.image[i] : 0;
    pixels.data.set([v, v, v, 255], 4 * i);
  }
  preview.getContext("2d").putImageData(pixels, 0, 0);
  const p = result?.probabilities ?? Array(10).fill(0);
  [...bars.children].forEach((li, d) => {
    li.classList.toggle("top", result?.digit === d);
    li.querySelector(".bar div").style.width = `${100 * p[d]}%`;
    li.querySelector("output").textContent = result ? `${(100 * p[d]).toFixed(1)}%` : "–";
  });
  digit.textContent = result ? String(result.digit) : "–";
  if (result) {
    digit.dataset.probabilities = JSON.stringify(p);
    digit.dataset.source = sourceName;
  } else {
    delete digit.dataset.probabilities;
    delete digit.dataset.source;
  }
  status.textContent = note || `${state.name} reads ${result.digit} (${(100 * p[result.digit]).toFixed(1)}%)`;
}

// --- models: models.json lists the exported ones, the most accurate first ---------------------------------
async function choose(entry) {
  status.textContent = `loading ${entry.name}…`;
  if (!loaded.has(entry.file)) loaded.set(entry.file, await loadModel(entry.file, { threads }));
  [state.model, state.name] = [loaded.get(entry.file), entry.name];
  document.documentElement.dataset.model = entry.name;
  const percent = (100 * entry.test_accuracy).toFixed(2);
  const accuracy = entry.test_accuracy ? `, ${percent}% on MNIST's test set` : "";
  const runtime = `onnxruntime-web ${state.model.version}, ${state.model.threads} wasm thread(s)`;
  state.hint = `${entry.name}${accuracy} (${runtime}): draw a digit`;
  update();
}

async function start() {
  clearPad();
  const response = await fetch("models.json");
  if (!response.ok) throw new Error(`models.json: HTTP ${response.status}`);
  const { models } = await response.json();
  if (!models.length) throw new Error("no model in this folder: python -m export lenet --web");
  for (const m of models) picker.add(new Option(m.name, m.file));
  $("#picker").hidden = models.length < 2;
  picker.addEventListener("change", () => choose(models[picker.selectedIndex]).catch(fail));
  const first = models.find((m) => m.name === params.get("model")) ?? models[0];
  picker.value = first.file;
  await choose(first);
}

function fail(e) {
  status.textContent = `error: ${e.message}`;
}

start().catch(fail);
