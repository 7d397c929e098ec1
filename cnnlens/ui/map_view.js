// The map view: feature maps as one picture, with the raw value under the pointer.
//
// Data (cnnlens.ui.map_view.map_view_data): png (base64), channels, height, width,
// columns, gap, values (base64 float32, C·H·W, or null), title, low, high,
// colorbar (CSS colours, or null), max_height, under (a base64 PNG, or null),
// under_title, opacity and clickable (a click sends {channel, x, y} back as the
// "picked" trigger). With an image under it, the maps are shown twice, side by side:
// alone, and laid over the image (titled under_title, with an opacity slider), from
// the one picture and values sent. Streamlit calls this function again with the same
// parent on every rerun, so the view is built once and then only updated: a new
// picture is one image swap, where a plotly chart is drawn anew. The opacity slider
// works in the browser alone and keeps its value across reruns.

function decodeValues(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}

function format(value) {
  return Number.isFinite(value) ? String(Number(value.toPrecision(4))) : String(value);
}

// The channel, x and y under a pointer at (px, py) in montage pixels, or null on a gap.
function locate(data, px, py) {
  const step = { x: data.width + data.gap, y: data.height + data.gap };
  const column = Math.floor(px / step.x);
  const row = Math.floor(py / step.y);
  const x = px - column * step.x;
  const y = py - row * step.y;
  const channel = row * data.columns + column;
  if (x >= data.width || y >= data.height || column >= data.columns || channel >= data.channels) {
    return null;
  }
  return { channel, x, y };
}

function build(parent) {
  const view = document.createElement("div");
  view.className = "cnnlens-map";
  view.innerHTML = `
    <div class="cnnlens-map-title"></div>
    <div class="cnnlens-map-body">
      <div class="cnnlens-map-frame"><div class="cnnlens-map-stack">
        <img class="cnnlens-map-under" alt="" hidden><img class="cnnlens-map-maps" alt="">
        <div class="cnnlens-map-tip" hidden></div>
      </div></div>
      <div class="cnnlens-map-scale" hidden>
        <span class="cnnlens-map-high"></span><div class="cnnlens-map-ramp"></div>
        <span class="cnnlens-map-low"></span>
      </div>
    </div>
    <label class="cnnlens-map-opacity" hidden>Map opacity
      <input type="range" min="0" max="1" step="0.05"><output></output>
    </label>`;
  parent.appendChild(view);
  const img = view.querySelector(".cnnlens-map-maps");
  const slider = view.querySelector(".cnnlens-map-opacity input");
  slider.addEventListener("input", () => showOpacity(view));
  const tip = view.querySelector(".cnnlens-map-tip");
  img.addEventListener("mousemove", (event) => {
    const data = view.cnnlensData;
    const box = img.getBoundingClientRect();
    const px = Math.floor(((event.clientX - box.left) / box.width) * img.naturalWidth);
    const py = Math.floor(((event.clientY - box.top) / box.height) * img.naturalHeight);
    const spot = data && locate(data, px, py);
    if (!spot) {
      tip.hidden = true;
      return;
    }
    const words = data.channels > 1 ? [`channel ${spot.channel}`] : [];
    words.push(`x ${spot.x}`, `y ${spot.y}`);
    if (data.values) {
      // Decoded on the first hover, not on every rerun: most new images are only looked at.
      view.cnnlensValues = view.cnnlensValues || decodeValues(data.values);
      const at = (spot.channel * data.height + spot.y) * data.width + spot.x;
      words.push(`value ${format(view.cnnlensValues[at])}`);
    }
    tip.textContent = words.join(" · ");
    tip.hidden = false;
    tip.style.left = `${event.clientX - box.left + 12}px`;
    tip.style.top = `${event.clientY - box.top + 12}px`;
  });
  img.addEventListener("mouseleave", () => {
    tip.hidden = true;
  });
  img.addEventListener("click", (event) => {
    const data = view.cnnlensData;
    if (!data || !data.clickable || !view.cnnlensPick) return;
    const box = img.getBoundingClientRect();
    const px = Math.floor(((event.clientX - box.left) / box.width) * img.naturalWidth);
    const py = Math.floor(((event.clientY - box.top) / box.height) * img.naturalHeight);
    const spot = locate(data, px, py);
    if (spot) view.cnnlensPick("picked", spot);
  });
  return view;
}

function showOpacity(view) {
  const slider = view.querySelector(".cnnlens-map-opacity input");
  const over = view.classList.contains("cnnlens-map-overlay");
  view.querySelector(".cnnlens-map-maps").style.opacity = over ? slider.value : "";
  view.querySelector(".cnnlens-map-opacity output").textContent =
    `${Math.round(slider.value * 100)}%`;
}

// Show one panel's data in its view (made by build), which is kept across reruns.
function show(view, data, pick) {
  view.cnnlensData = data;
  view.cnnlensValues = null;
  view.cnnlensPick = pick;
  view.classList.toggle("cnnlens-map-clickable", Boolean(data.clickable));
  view.dataset.title = data.title || "";
  view.querySelector(".cnnlens-map-title").textContent = data.title || "";
  // As wide as the column allows (100cqw), as long as it is at most max_height tall.
  const rows = Math.ceil(data.channels / data.columns);
  const wide = data.columns * (data.width + data.gap) - data.gap;
  const tall = rows * (data.height + data.gap) - data.gap;
  const img = view.querySelector(".cnnlens-map-maps");
  const under = view.querySelector(".cnnlens-map-under");
  // Laid over an image, the map stretches over it; the image sets the size.
  view.classList.toggle("cnnlens-map-overlay", Boolean(data.under));
  under.hidden = !data.under;
  view.querySelector(".cnnlens-map-opacity").hidden = !data.under;
  if (data.under) under.src = `data:image/png;base64,${data.under}`;
  const size = `min(100cqw, ${((data.max_height * wide) / tall).toFixed(1)}px)`;
  under.style.width = data.under ? size : "";
  img.style.width = data.under ? "" : size;
  img.src = `data:image/png;base64,${data.png}`;
  showOpacity(view);
  const scale = view.querySelector(".cnnlens-map-scale");
  scale.hidden = !data.colorbar;
  if (data.colorbar) {
    scale.style.height = `${Math.min(data.max_height, 320)}px`;
    view.querySelector(".cnnlens-map-ramp").style.background =
      `linear-gradient(to top, ${data.colorbar.join(", ")})`;
    view.querySelector(".cnnlens-map-high").textContent = format(data.high);
    view.querySelector(".cnnlens-map-low").textContent = format(data.low);
  }
}

export default function (component) {
  const { data, parentElement } = component;
  if (!data) return;
  // An image under the maps: the maps alone, and beside them the same maps over it.
  const panels = data.under
    ? [
        { ...data, under: null },
        { ...data, title: data.under_title, colorbar: null, clickable: false },
      ]
    : [data];
  let row = parentElement.querySelector(".cnnlens-map-row");
  if (!row) {
    row = document.createElement("div");
    row.className = "cnnlens-map-row";
    parentElement.appendChild(row);
  }
  panels.forEach((panel, i) => {
    let view = row.children[i];
    if (!view) {
      view = build(row);
      view.querySelector(".cnnlens-map-opacity input").value = data.opacity ?? 0.5;
    }
    show(view, panel, component.setTriggerValue);
  });
  while (row.children.length > panels.length) row.lastElementChild.remove();
}
