// The convolution animation: a stencil of weights slides over one input channel and
// fills the output map, in the browser alone (no reruns).
//
// Data (cnnlens.ui.conv_animation.animation_data): input and padding (rows), kernel,
// output (rows), stride, dilation, origin, input_origin and start.

function colour(value, reach) {
  if (!Number.isFinite(value) || reach <= 0) return "#ffffff";
  const t = Math.max(-1, Math.min(1, value / reach));
  // Diverging, centred on zero: blue below, white at zero, red above.
  const [r, g, b] = t >= 0 ? [214, 96, 77] : [67, 147, 195];
  const a = Math.abs(t);
  const mix = (c) => Math.round(255 + (c - 255) * a);
  return `rgb(${mix(r)}, ${mix(g)}, ${mix(b)})`;
}

function reachOf(rows) {
  let reach = 0;
  for (const row of rows) for (const v of row) if (Number.isFinite(v)) reach = Math.max(reach, Math.abs(v));
  return reach;
}

function format(value) {
  return String(Number(value.toPrecision(3)));
}

function grid(parent, rows, columns) {
  const box = document.createElement("div");
  box.className = "cnnlens-conv-grid";
  box.style.gridTemplateColumns = `repeat(${columns}, 22px)`;
  const cells = [];
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < columns; j++) {
      const cell = document.createElement("div");
      cell.className = "cnnlens-conv-cell";
      box.appendChild(cell);
      cells.push(cell);
    }
  }
  parent.appendChild(box);
  return cells;
}

function build(parent) {
  const view = document.createElement("div");
  view.className = "cnnlens-conv";
  view.innerHTML = `
    <div class="cnnlens-conv-bar">
      <button class="cnnlens-conv-play" type="button">▶ Play</button>
      <button class="cnnlens-conv-reset" type="button">Reset</button>
      <span class="cnnlens-conv-step"></span>
    </div>
    <div class="cnnlens-conv-body">
      <div><div class="cnnlens-conv-label">Input channel (hatched: padding)</div><div class="cnnlens-conv-in"></div></div>
      <div><div class="cnnlens-conv-label">Stencil</div><div class="cnnlens-conv-k"></div></div>
      <div><div class="cnnlens-conv-label">Output</div><div class="cnnlens-conv-out"></div></div>
    </div>`;
  parent.appendChild(view);
  view.querySelector(".cnnlens-conv-play").addEventListener("click", () => toggle(view));
  view.querySelector(".cnnlens-conv-reset").addEventListener("click", () => reset(view));
  return view;
}

function stop(view) {
  if (view.cnnlensTimer) clearInterval(view.cnnlensTimer);
  view.cnnlensTimer = null;
  view.querySelector(".cnnlens-conv-play").textContent = "▶ Play";
}

function toggle(view) {
  if (view.cnnlensTimer) {
    stop(view);
    return;
  }
  const s = view.cnnlensState;
  if (s.step >= s.total) {
    reset(view);
  }
  view.querySelector(".cnnlens-conv-play").textContent = "❚❚ Pause";
  view.cnnlensTimer = setInterval(() => {
    if (view.cnnlensState.step >= view.cnnlensState.total) {
      stop(view);
      return;
    }
    show(view, view.cnnlensState.step);
    view.cnnlensState.step += 1;
  }, 90);
}

function reset(view) {
  stop(view);
  const s = view.cnnlensState;
  s.step = 0;
  for (const cell of s.outCells) {
    cell.style.background = "";
    cell.classList.add("cnnlens-conv-empty");
    cell.classList.remove("cnnlens-conv-now");
  }
  for (const cell of s.inCells) cell.classList.remove("cnnlens-conv-on");
  view.querySelector(".cnnlens-conv-step").textContent = "";
}

// Show output cell number ``step`` (row-major): its window on the input, its value filled in.
function show(view, step) {
  const s = view.cnnlensState;
  const d = s.data;
  const columns = d.output[0].length;
  const i = Math.floor(step / columns);
  const j = step % columns;
  for (const cell of s.inCells) cell.classList.remove("cnnlens-conv-on");
  const kh = d.kernel.length;
  const kw = d.kernel[0].length;
  for (let a = 0; a < kh; a++) {
    for (let b = 0; b < kw; b++) {
      const r = i * d.stride[0] + a * d.dilation[0];
      const c = j * d.stride[1] + b * d.dilation[1];
      s.inCells[r * d.input[0].length + c].classList.add("cnnlens-conv-on");
    }
  }
  for (const cell of s.outCells) cell.classList.remove("cnnlens-conv-now");
  const out = s.outCells[step];
  const value = d.output[i][j];
  out.classList.remove("cnnlens-conv-empty");
  out.classList.add("cnnlens-conv-now");
  out.style.background = colour(value, s.outReach);
  out.title = `row ${d.origin[0] + i}, column ${d.origin[1] + j}: ${format(value)}`;
  view.querySelector(".cnnlens-conv-step").textContent =
    `output row ${d.origin[0] + i}, column ${d.origin[1] + j}: window × stencil, added up = ${format(value)}`;
}

function draw(view, data) {
  stop(view);
  const rows = data.input.length;
  const columns = data.input[0].length;
  const body = view.querySelector(".cnnlens-conv-in");
  body.textContent = "";
  const inCells = grid(body, rows, columns);
  const inReach = reachOf(data.input);
  inCells.forEach((cell, n) => {
    const v = data.input[Math.floor(n / columns)][n % columns];
    const pad = data.padding[Math.floor(n / columns)][n % columns];
    cell.style.background = colour(v, inReach);
    cell.classList.toggle("cnnlens-conv-pad", pad);
    cell.title = pad ? `padding: ${format(v)}` : format(v);
  });
  const kBody = view.querySelector(".cnnlens-conv-k");
  kBody.textContent = "";
  const kCells = grid(kBody, data.kernel.length, data.kernel[0].length);
  const kReach = reachOf(data.kernel);
  kCells.forEach((cell, n) => {
    const v = data.kernel[Math.floor(n / data.kernel[0].length)][n % data.kernel[0].length];
    cell.style.background = colour(v, kReach);
    cell.title = format(v);
  });
  const oBody = view.querySelector(".cnnlens-conv-out");
  oBody.textContent = "";
  const outCells = grid(oBody, data.output.length, data.output[0].length);
  view.cnnlensState = {
    data,
    inCells,
    outCells,
    outReach: reachOf(data.output),
    step: 0,
    total: outCells.length,
  };
  reset(view);
  // Start on the clicked cell, so the first picture already answers the question.
  show(view, data.start[0] * data.output[0].length + data.start[1]);
}

export default function (component) {
  const { data, parentElement } = component;
  if (!data) return;
  let view = parentElement.querySelector(".cnnlens-conv");
  if (!view) view = build(parentElement);
  const text = JSON.stringify(data);
  if (view.cnnlensText === text) return; // a rerun with the same numbers keeps the animation
  view.cnnlensText = text;
  draw(view, data);
}
