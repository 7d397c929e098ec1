// The occlusion view: drag a grey square over the image and watch each class's probability.
//
// Data (cnnlens.ui.occlusion_view.occlusion_view_data): image (a PNG data URL), height,
// width, display (the image's longer side on screen, CSS pixels), window, stride, rows
// and cols (the squares' top-left rows and columns: every pair is a position), classes,
// answer, base (the classes' probabilities without the square), table (base64
// little-endian uint16, probabilities in steps of 1/steps, one row of classes per
// position, row by row of rows then cols), steps, fill (the square's CSS colour), square
// (its name), fill_words and colours (bar, answer, down, up).
//
// The table holds every position, so a move (a pointer: mouse, pen or finger; or the
// arrow keys) only reads it: the square snaps to the nearest position and the bars
// follow, with nothing sent to the server. When the square is let go (or the keys rest),
// its top-left {row, col} is sent back as the "square" state (one rerun). Streamlit calls
// this function again on every rerun with the same parent: the view is built once, and
// the square stays where it is while the grid does.

const KEY_REST_MS = 600; // after the last arrow key, report where the square rests
const UNCHANGED = 0.005; // below one step of the two decimals shown: "no change"
const LONG_NAME = 12; // a longer class name gets a line of its own above its bar

function decodeTable(data) {
  const text = atob(data.table);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  const view = new DataView(bytes.buffer);
  const table = new Float32Array(bytes.length / 2);
  for (let i = 0; i < table.length; i++) table[i] = view.getUint16(2 * i, true) / data.steps;
  return table;
}

// The index of the value of a sorted axis nearest to value.
function nearest(axis, value) {
  let best = 0;
  for (let i = 1; i < axis.length; i++) {
    if (Math.abs(axis[i] - value) < Math.abs(axis[best] - value)) best = i;
  }
  return best;
}

const format = (p) => p.toFixed(2);

// The change between the two numbers shown (each to two decimals), so that they agree.
function change(before, after) {
  const delta = Number(format(after)) - Number(format(before));
  if (Math.abs(delta) < UNCHANGED) return { text: "no change", words: "no change", kind: "same" };
  const size = format(Math.abs(delta));
  return delta < 0
    ? { text: `▼ ${size}`, words: `down ${size}`, kind: "down" }
    : { text: `▲ ${size}`, words: `up ${size}`, kind: "up" };
}

function build(parent) {
  const view = document.createElement("div");
  view.className = "cnnlens-occ";
  view.innerHTML = `
    <div class="cnnlens-occ-picture">
      <div class="cnnlens-occ-stack" role="group">
        <img class="cnnlens-occ-image" alt="The image as the network sees it" draggable="false">
        <div class="cnnlens-occ-square" tabindex="0" role="button"
             aria-roledescription="draggable square"></div>
      </div>
      <div class="cnnlens-occ-hint"></div>
    </div>
    <div class="cnnlens-occ-bars">
      <div class="cnnlens-occ-heading">How sure the network is (0 to 1)</div>
      <div class="cnnlens-occ-rows" role="list"></div>
      <div class="cnnlens-occ-key">
        <span><i class="cnnlens-occ-key-bar"></i>with the square</span>
        <span><i class="cnnlens-occ-key-tick"></i>without it</span>
        <span><i class="cnnlens-occ-key-answer"></i>the network's answer without it</span>
      </div>
    </div>
    <div class="cnnlens-occ-status" aria-live="polite"></div>`;
  parent.appendChild(view);
  listen(view);
  return view;
}

// The pointer's place on the image, in input pixels (fractional).
function pixelAt(view, event) {
  const box = view.querySelector(".cnnlens-occ-stack").getBoundingClientRect();
  const { width, height } = view.occ.data;
  return {
    x: ((event.clientX - box.left) / box.width) * width,
    y: ((event.clientY - box.top) / box.height) * height,
  };
}

function dragTo(view, event) {
  const { data, grab } = view.occ;
  const at = pixelAt(view, event);
  moveTo(view, nearest(data.rows, at.y - grab.y), nearest(data.cols, at.x - grab.x));
}

function listen(view) {
  const stack = view.querySelector(".cnnlens-occ-stack");
  const square = view.querySelector(".cnnlens-occ-square");
  stack.addEventListener("pointerdown", (event) => {
    if (!view.occ || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    const { data, i, j } = view.occ;
    const at = pixelAt(view, event);
    // Held where it was caught; a press beside it brings its centre there.
    view.occ.grab =
      event.target === square
        ? { x: at.x - data.cols[j], y: at.y - data.rows[i] }
        : { x: data.window / 2, y: data.window / 2 };
    view.occ.dragging = event.pointerId;
    stack.setPointerCapture(event.pointerId);
    view.classList.add("cnnlens-occ-dragging");
    square.focus({ preventScroll: true });
    dragTo(view, event);
  });
  stack.addEventListener("pointermove", (event) => {
    if (view.occ && view.occ.dragging === event.pointerId) dragTo(view, event);
  });
  const letGo = (event) => {
    if (!view.occ || view.occ.dragging !== event.pointerId) return;
    view.occ.dragging = null;
    view.classList.remove("cnnlens-occ-dragging");
    announce(view);
    report(view);
  };
  stack.addEventListener("pointerup", letGo);
  stack.addEventListener("pointercancel", letGo);
  square.addEventListener("keydown", (event) => onKey(view, event));
}

const STEPS = {
  ArrowLeft: [0, -1],
  ArrowRight: [0, 1],
  ArrowUp: [-1, 0],
  ArrowDown: [1, 0],
};

function onKey(view, event) {
  if (!view.occ) return;
  const { data, i, j } = view.occ;
  let to;
  if (event.key in STEPS) {
    const [di, dj] = STEPS[event.key];
    to = [i + di, j + dj];
  } else if (event.key === "Home") {
    to = [0, 0];
  } else if (event.key === "End") {
    to = [data.rows.length - 1, data.cols.length - 1];
  } else {
    return;
  }
  event.preventDefault();
  const clamp = (k, n) => Math.min(Math.max(k, 0), n - 1);
  moveTo(view, clamp(to[0], data.rows.length), clamp(to[1], data.cols.length));
  announce(view);
  clearTimeout(view.occ.resting);
  view.occ.resting = setTimeout(() => report(view), KEY_REST_MS);
}

// Tell Python where the square rests (one rerun, for a caption), once per new place.
function report(view) {
  const { data, i, j, send } = view.occ;
  const square = { row: data.rows[i], col: data.cols[j] };
  const said = view.occ.reported;
  if (said && said.row === square.row && said.col === square.col) return;
  view.occ.reported = square;
  if (send) send("square", square);
}

function moveTo(view, i, j) {
  const occ = view.occ;
  if (occ.i === i && occ.j === j && occ.drawn) return;
  occ.i = i;
  occ.j = j;
  occ.drawn = true;
  const { data, table } = occ;
  const square = view.querySelector(".cnnlens-occ-square");
  square.style.left = `${(data.cols[j] / data.width) * 100}%`;
  square.style.top = `${(data.rows[i] / data.height) * 100}%`;
  square.dataset.row = data.rows[i];
  square.dataset.col = data.cols[j];
  const shown = data.classes.length;
  const place = i * data.cols.length + j;
  view.querySelectorAll(".cnnlens-occ-row").forEach((row, c) => {
    const p = table[place * shown + c];
    const before = data.base[c];
    const moved = change(before, p);
    row.dataset.value = String(p);
    row.querySelector(".cnnlens-occ-fill").style.width = `${p * 100}%`;
    row.querySelector(".cnnlens-occ-values").textContent = `${format(before)} → ${format(p)}`;
    const delta = row.querySelector(".cnnlens-occ-change");
    delta.textContent = moved.text;
    delta.dataset.kind = moved.kind;
    const words = `${data.classes[c]}: ${format(before)} → ${format(p)}, ${moved.words}`;
    row.setAttribute("aria-label", words);
  });
}

// Screen readers hear the answer's class where the square rests.
function announce(view) {
  const { data, table, i, j } = view.occ;
  const p = table[(i * data.cols.length + j) * data.classes.length];
  view.querySelector(".cnnlens-occ-status").textContent =
    `Square at x ${data.cols[j]}, y ${data.rows[i]}: ` +
    `${data.answer} ${format(data.base[0])} → ${format(p)}`;
}

function rowsFor(view, data) {
  const rows = view.querySelector(".cnnlens-occ-rows");
  rows.replaceChildren();
  view.classList.toggle(
    "cnnlens-occ-long",
    data.classes.some((name) => name.length > LONG_NAME),
  );
  data.classes.forEach((name, c) => {
    const row = document.createElement("div");
    row.className = "cnnlens-occ-row";
    row.setAttribute("role", "listitem");
    row.dataset.class = name;
    row.dataset.base = String(data.base[c]);
    const answer = name === data.answer;
    row.classList.toggle("cnnlens-occ-answer", answer);
    row.innerHTML = `
      <div class="cnnlens-occ-name"></div>
      <div class="cnnlens-occ-track"><div class="cnnlens-occ-fill"></div>
        <div class="cnnlens-occ-tick"></div></div>
      <div class="cnnlens-occ-text"><span class="cnnlens-occ-values"></span>
        <span class="cnnlens-occ-change"></span></div>`;
    const label = row.querySelector(".cnnlens-occ-name");
    label.textContent = name;
    label.title = answer ? `${name}: the network's answer without the square` : name;
    row.querySelector(".cnnlens-occ-fill").style.background = answer
      ? data.colours.answer
      : data.colours.bar;
    row.querySelector(".cnnlens-occ-tick").style.left = `${data.base[c] * 100}%`;
    rows.appendChild(row);
  });
}

// The picture, the square's size and colour, and the words that name them.
function showPicture(view, data) {
  const img = view.querySelector(".cnnlens-occ-image");
  if (img.src !== data.image) img.src = data.image;
  // Enlarged by a whole factor: crisp pixels; by less than two: smooth.
  const side = Math.max(data.width, data.height);
  img.style.imageRendering = data.display % side === 0 ? "pixelated" : "auto";
  const stack = view.querySelector(".cnnlens-occ-stack");
  stack.style.width = `min(100%, ${(data.display * data.width) / side}px)`;
  stack.style.aspectRatio = `${data.width} / ${data.height}`;
  const square = view.querySelector(".cnnlens-occ-square");
  square.style.width = `${(data.window / data.width) * 100}%`;
  square.style.height = `${(data.window / data.height) * 100}%`;
  square.style.background = data.fill;
  // "Grey square: drag it over the image, ...", or "Black square: ..." where 0 is black.
  square.setAttribute(
    "aria-label",
    `${data.square}: drag it over the image, or move it with the arrow keys`,
  );
  stack.setAttribute(
    "aria-label",
    `The image as the network sees it, with a ${data.square.toLowerCase()} to drag over it`,
  );
  view.querySelector(".cnnlens-occ-hint").textContent =
    "Drag the square over the image, or click it and use the arrow keys. " +
    `The network sees ${data.fill_words} under it.`;
  for (const name of ["down", "up", "answer", "bar"]) {
    view.style.setProperty(`--cnnlens-occ-${name}`, data.colours[name]);
  }
}

// Show new data in the view (made by build), which is kept across reruns.
function show(view, data) {
  const shown = JSON.stringify(data);
  if (view.occ && view.occ.shown === shown) return; // a rerun that changes nothing here
  const old = view.occ && view.occ.data;
  const grid = (d) => JSON.stringify([d.rows, d.cols, d.window, d.height, d.width]);
  const sameGrid = Boolean(old) && grid(old) === grid(data);
  const keep = sameGrid ? { i: view.occ.i, j: view.occ.j } : { i: 0, j: 0 };
  view.occ = { ...(view.occ || {}), data, shown, table: decodeTable(data), drawn: false };
  if (!sameGrid) view.occ.reported = null;
  showPicture(view, data);
  rowsFor(view, data);
  moveTo(view, keep.i, keep.j);
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  if (!data) return;
  const view = parentElement.querySelector(".cnnlens-occ") || build(parentElement);
  show(view, data);
  view.occ.send = setStateValue;
}
