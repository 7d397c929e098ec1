// The drawing pad: write a digit with a mouse, pen or finger, and see what the network sees.
//
// Data (cnnlens.ui.drawing_pad.drawing_pad_ui): side (the pad's own pixels a side),
// strokes ([[[x, y], ...], ...] in those pixels), width (the pen's), reset (a number the
// server raises when it sets the drawing itself: a link, a recipe), ink and paper (CSS
// colours), max_points and max_strokes, seen (the network's input as a base64 PNG, or
// null), seen_side (its side on screen, CSS pixels), seen_title, and note (a sentence
// under the pad, or null).
//
// Strokes are drawn in the browser as the pen moves; when a stroke ends (and on Undo or
// Clear) the whole drawing goes back as the "drawing" state: {strokes, width}, one rerun.
// The pad keeps its own strokes across reruns. It takes the server's only on its first
// build or when the server's reset number changes, so a stroke drawn while a rerun runs
// is kept, and the next rerun carries it.

const MIN_STEP = 2; // a point closer than this (pad pixels) to the last one is skipped

function build(parent) {
  const view = document.createElement("div");
  view.className = "cnnlens-pad";
  view.innerHTML = `
    <div class="cnnlens-pad-row">
      <div class="cnnlens-pad-main">
        <canvas class="cnnlens-pad-canvas" role="img" aria-label="Drawing pad"></canvas>
        <div class="cnnlens-pad-buttons">
          <button type="button" class="cnnlens-pad-undo">Undo</button>
          <button type="button" class="cnnlens-pad-clear">Clear</button>
        </div>
      </div>
      <figure class="cnnlens-pad-seen" hidden>
        <img alt="What the network sees">
        <figcaption></figcaption>
      </figure>
    </div>
    <div class="cnnlens-pad-note" role="status"></div>`;
  parent.appendChild(view);
  const canvas = view.querySelector("canvas");
  const pad = { strokes: [], live: null, reset: null, data: null, send: null };
  view.pad = pad;
  canvas.addEventListener("pointerdown", (event) => start(view, event));
  canvas.addEventListener("pointermove", (event) => move(view, event));
  canvas.addEventListener("pointerup", (event) => end(view, event));
  canvas.addEventListener("pointercancel", (event) => end(view, event));
  view.querySelector(".cnnlens-pad-undo").addEventListener("click", () => {
    pad.strokes.pop();
    changed(view);
  });
  view.querySelector(".cnnlens-pad-clear").addEventListener("click", () => {
    pad.strokes = [];
    changed(view);
  });
  new ResizeObserver(() => paint(view)).observe(canvas);
  return view;
}

// The pad pixel under a pointer event, kept on the pad.
function padPoint(view, event) {
  const canvas = view.querySelector("canvas");
  const box = canvas.getBoundingClientRect();
  const side = view.pad.data.side;
  const clamp = (v) => Math.min(side - 1, Math.max(0, Math.round(v)));
  return [
    clamp(((event.clientX - box.left) / box.width) * side),
    clamp(((event.clientY - box.top) / box.height) * side),
  ];
}

function pointCount(pad) {
  return pad.strokes.reduce((sum, stroke) => sum + stroke.length, 0);
}

function start(view, event) {
  const pad = view.pad;
  if (!pad.data || (event.pointerType === "mouse" && event.button !== 0)) return;
  if (pad.strokes.length >= pad.data.max_strokes || pointCount(pad) >= pad.data.max_points) {
    note(view, "The pad holds no more strokes: Undo or Clear, then draw again.");
    return;
  }
  event.preventDefault();
  view.querySelector("canvas").setPointerCapture(event.pointerId);
  pad.live = { id: event.pointerId, points: [padPoint(view, event)] };
  pad.strokes.push(pad.live.points);
  paint(view);
}

function move(view, event) {
  const pad = view.pad;
  if (!pad.live || pad.live.id !== event.pointerId) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const each of events.length ? events : [event]) {
    const point = padPoint(view, each);
    const last = pad.live.points[pad.live.points.length - 1];
    if (Math.hypot(point[0] - last[0], point[1] - last[1]) < MIN_STEP) continue;
    if (pointCount(pad) >= pad.data.max_points) break;
    pad.live.points.push(point);
  }
  paint(view);
}

function end(view, event) {
  const pad = view.pad;
  if (!pad.live || pad.live.id !== event.pointerId) return;
  pad.live = null;
  changed(view);
}

// Send the whole drawing: the server reruns with it.
function changed(view) {
  const pad = view.pad;
  paint(view);
  if (pad.send) pad.send("drawing", { strokes: pad.strokes, width: pad.data.width });
}

function note(view, text) {
  view.querySelector(".cnnlens-pad-note").textContent = text || "";
}

// Paint the strokes with the round pen, at the canvas's own resolution.
function paint(view) {
  const pad = view.pad;
  const data = pad.data;
  if (!data) return;
  const canvas = view.querySelector("canvas");
  const css = canvas.getBoundingClientRect().width || 256;
  const pixels = Math.round(css * (window.devicePixelRatio || 1));
  if (canvas.width !== pixels) canvas.width = canvas.height = pixels;
  const context = canvas.getContext("2d");
  const scale = pixels / data.side;
  context.fillStyle = data.paper;
  context.fillRect(0, 0, pixels, pixels);
  context.strokeStyle = context.fillStyle = data.ink;
  context.lineWidth = data.width * scale;
  context.lineCap = context.lineJoin = "round";
  for (const stroke of pad.strokes) {
    context.beginPath();
    context.moveTo(stroke[0][0] * scale, stroke[0][1] * scale);
    for (const [x, y] of stroke.slice(1)) context.lineTo(x * scale, y * scale);
    if (stroke.length === 1) context.lineTo(stroke[0][0] * scale, stroke[0][1] * scale);
    context.stroke();
  }
  view.querySelector(".cnnlens-pad-undo").disabled = pad.strokes.length === 0;
  view.querySelector(".cnnlens-pad-clear").disabled = pad.strokes.length === 0;
}

function show(view, data) {
  const pad = view.pad;
  pad.data = data;
  if (pad.reset !== data.reset) {
    pad.reset = data.reset;
    pad.strokes = data.strokes.map((stroke) => stroke.map((point) => [...point]));
    pad.live = null;
  }
  const seen = view.querySelector(".cnnlens-pad-seen");
  seen.hidden = !data.seen;
  if (data.seen) {
    const img = seen.querySelector("img");
    img.src = `data:image/png;base64,${data.seen}`;
    img.style.width = img.style.height = `${data.seen_side}px`;
    seen.querySelector("figcaption").textContent = data.seen_title;
  }
  note(view, data.note);
  paint(view);
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  if (!data) return;
  const view = parentElement.querySelector(".cnnlens-pad") || build(parentElement);
  show(view, data);
  view.pad.send = setStateValue;
}
