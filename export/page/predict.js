/*
 * predict.js: read a handwritten digit in the browser with a model exported by mnist-zoo, on onnxruntime-web
 * (WebAssembly). An ES module: the page (app.js) uses it, and so can any other page served beside it.
 *
 *   import { loadModel, predict } from "./predict.js";
 *   const model = await loadModel("lenet.onnx");
 *   const { digit, probabilities, image } = await predict(model, canvas);  // a canvas, <img>, ImageBitmap
 *
 * prepare() is mnist_zoo/predict.py's prepare_array step for step, so that the page and `python -m
 * mnist_zoo predict` give the model the same 28x28 image: grey, inverted when the background is light, the
 * paper's noise taken off and the contrast stretched, cropped to the ink, the longer side scaled to 20 px
 * (torch's antialiased bilinear resize), the centre of mass at pixel (14, 14). One addition: a 28x28 image
 * of light ink on a dark background is an MNIST digit already, and is used as it is.
 */
import * as ort from "./ort.wasm.min.mjs";

export const MEAN = 0.1307; // of MNIST's training pixels scaled to 0-1: the exports' input contract
export const STD = 0.3081;
const CANVAS = 28; // MNIST: a 20x20 box in a 28x28 field
const BOX = 20;
const MIN_CONTRAST = 0.08; // the constants of mnist_zoo/predict.py
const BOX_FLOOR = 0.05;
const PAPER_QUANTILE = 0.98;
const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);

/** The image holds no digit (blank, or too faint); the message says which. */
export class NoDigit extends Error {}

/**
 * An exported model (.onnx URL) in an onnxruntime-web session. `threads`: wasm threads; by default
 * onnxruntime-web's choice, which is 1 unless the page is cross-origin isolated. It is read once, when the
 * first model is loaded.
 */
export async function loadModel(url, { threads } = {}) {
  if (threads) ort.env.wasm.numThreads = threads;
  const session = await ort.InferenceSession.create(url, { executionProviders: ["wasm"] });
  return new Model(session);
}

export class Model {
  constructor(session) {
    this.session = session;
    this.inputName = session.inputNames[0];
    this.outputName = session.outputNames.includes("logits") ? "logits" : session.outputNames[0];
    this.threads = ort.env.wasm.numThreads; // what onnxruntime-web settled on
    this.version = ort.env.versions.web;
  }

  /** uint8 [784], light ink on black (what prepare returns) -> the input tensor [1, 1, 28, 28]. */
  input(image) {
    const x = new Float32Array(image.length);
    for (let i = 0; i < x.length; i++) x[i] = (image[i] / 255 - MEAN) / STD;
    return new ort.Tensor("float32", x, [1, 1, CANVAS, CANVAS]);
  }

  /** The model's logits (Float32Array [10]) for an input tensor. */
  async logits(input) {
    const out = await this.session.run({ [this.inputName]: input });
    return out[this.outputName].data;
  }

  /** Probabilities (softmax of the logits, in double precision) of a prepared 28x28 image. */
  async probabilities(image) {
    return softmax(await this.logits(this.input(image)));
  }
}

export function softmax(logits) {
  const top = Math.max(...logits);
  const e = Array.from(logits, (v) => Math.exp(v - top));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / total);
}

/** The digit in a canvas, <img>, ImageBitmap or ImageData: { digit, probabilities, image, inverted }. */
export async function predict(model, source) {
  const { image, inverted } = prepare(toGrey(source));
  const probabilities = await model.probabilities(image);
  const digit = probabilities.indexOf(Math.max(...probabilities));
  return { digit, probabilities, image, inverted };
}

/**
 * { grey: Float64Array 0-1, width, height } of a canvas, <img>, ImageBitmap or ImageData, as predict.py's
 * load_grey reads a file: Pillow's "L" luma of an opaque image; a transparent drawing is put on the
 * background that contrasts with its ink.
 */
export function toGrey(source) {
  const { width, height, data } = source instanceof ImageData ? source : pixels(source);
  const n = width * height;
  const grey = new Float64Array(n);
  let opaque = true;
  for (let i = 0; i < n; i++) opaque &&= data[4 * i + 3] === 255;
  if (opaque) {
    for (let i = 0; i < n; i++) {
      const [r, g, b] = [data[4 * i], data[4 * i + 1], data[4 * i + 2]];
      grey[i] = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) / 255; // Pillow's convert("L")
    }
    return { grey, width, height };
  }
  const luma = new Float64Array(n);
  let visible = 0;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    luma[i] = (0.299 * data[4 * i] + 0.587 * data[4 * i + 1] + 0.114 * data[4 * i + 2]) / 255;
    if (data[4 * i + 3] / 255 > 0.5) {
      visible += 1;
      sum += luma[i];
    }
  }
  const backdrop = visible === 0 || sum / visible < 0.5 ? 1 : 0;
  for (let i = 0; i < n; i++) {
    const alpha = data[4 * i + 3] / 255;
    grey[i] = alpha * luma[i] + (1 - alpha) * backdrop;
  }
  return { grey, width, height };
}

function pixels(source) {
  const width = source.naturalWidth || source.width;
  const height = source.naturalHeight || source.height;
  const context = new OffscreenCanvas(width, height).getContext("2d", { willReadFrequently: true });
  context.drawImage(source, 0, 0);
  return context.getImageData(0, 0, width, height);
}

/** Grey (any size, any polarity) -> { image: Uint8Array [784] light ink on black, inverted }; see the top. */
export function prepare({ grey, width, height }) {
  const border = [];
  for (let x = 0; x < width; x++) border.push(grey[x], grey[(height - 1) * width + x]);
  for (let y = 0; y < height; y++) border.push(grey[y * width], grey[y * width + width - 1]);
  let background = quantile(border, 0.5);
  // Paper grain, shadows and JPEG noise: whatever the border itself varies by is not ink.
  const noise = quantile(
    border.map((v) => Math.abs(v - background)),
    PAPER_QUANTILE,
  );
  const inverted = background > 0.5; // dark ink on light paper: MNIST wants the opposite
  if (width === CANVAS && height === CANVAS && !inverted) {
    const image = new Uint8Array(grey.length);
    for (let i = 0; i < image.length; i++) image[i] = roundHalfEven(grey[i] * 255);
    return { image, inverted };
  }
  if (inverted) background = 1 - background;
  const ink = new Float64Array(grey.length); // (loops: TypedArray.from with a function is 10x slower in V8)
  let contrast = -Infinity;
  for (let i = 0; i < ink.length; i++) {
    ink[i] = (inverted ? 1 - grey[i] : grey[i]) - background - noise;
    contrast = Math.max(contrast, ink[i]);
  }
  if (contrast < MIN_CONTRAST) {
    throw new NoDigit("no digit found: nothing stands out from the background (blank or nearly uniform)");
  }
  let [top, bottom, left, right] = [height, -1, width, -1];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = clamp(ink[y * width + x] / contrast, 0, 1);
      ink[y * width + x] = v;
      if (v > BOX_FLOOR) {
        top = Math.min(top, y);
        bottom = y;
        left = Math.min(left, x);
        right = Math.max(right, x);
      }
    }
  }
  const [h, w] = [bottom - top + 1, right - left + 1];
  const crop = new Float64Array(h * w);
  for (let y = 0; y < h; y++) {
    const start = (top + y) * width + left;
    crop.set(ink.subarray(start, start + w), y * w);
  }
  const scale = BOX / Math.max(h, w);
  const [rows, cols] = [Math.max(1, roundHalfEven(h * scale)), Math.max(1, roundHalfEven(w * scale))];
  const box = resize(crop, h, w, rows, cols);
  let [total, cy, cx] = [0, 0, 0];
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < cols; x++) {
      const v = box[y * cols + x];
      total += v;
      cy += v * y;
      cx += v * x;
    }
  }
  if (total <= 0) throw new NoDigit("no digit found after scaling (the ink is too faint or too small)");
  // Centre of mass at pixel (14, 14), as long as the box stays inside the field (as MNIST's digits).
  const at = (moment, size) => clamp(roundHalfEven(CANVAS / 2 - moment / total), 0, CANVAS - size);
  const [y0, x0] = [at(cy, rows), at(cx, cols)];
  const image = new Uint8Array(CANVAS * CANVAS);
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < cols; x++) image[(y0 + y) * CANVAS + x0 + x] = roundHalfEven(box[y * cols + x] * 255);
  }
  return { image, inverted };
}

/** numpy's quantile (linear interpolation; the median of an even count is the mean of the middle two). */
function quantile(values, q) {
  const s = Float64Array.from(values).sort();
  const at = q * (s.length - 1);
  const [lo, hi] = [Math.floor(at), Math.ceil(at)];
  return q === 0.5 ? (s[lo] + s[hi]) / 2 : s[lo] + (s[hi] - s[lo]) * (at - lo);
}

/** Python's and numpy's round: halves go to the even neighbour. */
function roundHalfEven(v) {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False): a triangle filter
 * widened by the scale when shrinking (so every source pixel counts), clipped at the edges and renormalised;
 * separable, across then down. Returns Float64Array [rows * cols], clamped to 0-1. (torch 2.14 on the CPU
 * gets a resize to one pixel wide wrong, every output row repeating the first; this does not copy that.)
 */
function resize(src, h, w, rows, cols) {
  const [across, down] = [taps(w, cols), taps(h, rows)];
  const mid = new Float64Array(h * cols);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < cols; x++) {
      const { lo, weights } = across[x];
      for (let j = 0; j < weights.length; j++) mid[y * cols + x] += weights[j] * src[y * w + lo + j];
    }
  }
  const out = new Float64Array(rows * cols);
  for (let y = 0; y < rows; y++) {
    const { lo, weights } = down[y];
    for (let x = 0; x < cols; x++) {
      let v = 0;
      for (let j = 0; j < weights.length; j++) v += weights[j] * mid[(lo + j) * cols + x];
      out[y * cols + x] = clamp(v, 0, 1);
    }
  }
  return out;
}

/** For each of `m` outputs from `n` inputs: the first input it reads and the weights of those it reads. */
function taps(n, m) {
  const scale = n / m;
  const support = Math.max(scale, 1);
  return Array.from({ length: m }, (_, i) => {
    const centre = scale * (i + 0.5);
    const lo = Math.max(Math.trunc(centre - support + 0.5), 0);
    const hi = Math.min(Math.trunc(centre + support + 0.5), n);
    const triangle = (j) => Math.max(0, 1 - Math.abs((lo + j - centre + 0.5) / support));
    const raw = Array.from({ length: hi - lo }, (_, j) => triangle(j));
    const total = raw.reduce((a, b) => a + b, 0);
    return { lo, weights: raw.map((v) => (total ? v / total : 0)) };
  });
}
