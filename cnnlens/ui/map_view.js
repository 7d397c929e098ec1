// The map view: feature maps as one picture, with the raw value under the pointer.
//
// Data (cnnlens.ui.map_view.map_view_data and map_view_ui): png (base64), channels,
// height, width, columns, gap, values (base64 float32, C·H·W, or null), title, low,
// high, colorbar (CSS colours, or null), legend ({colours, words}, or null), numbers
// (each tile's channel number, or null: its place), max_height, under (a base64 PNG, or
// null), overlay (the maps as laid over it: a base64 PNG, see-through at zero), signed,
// under_title, opacity, chosen (a channel whose tile is outlined, or null), point
// ([x, y] of the first map, marked, or null), numbered (write the numbers on the
// tiles), reveal (an element key to scroll to once a click's point is drawn) and
// clickable (a click sends {channel, x, y} back as the "picked" trigger). With an image
// under it, the maps are shown twice, side by side: alone, and laid over the image
// (titled under_title, with an opacity slider). Streamlit calls this function again
// with the same parent on every rerun, so the view is built once and then only
// updated: a new picture is one image swap, where a plotly chart is drawn anew. The
// opacity slider works in the browser alone and keeps its value across reruns.

function decodeValues(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}

function format(value) {
  return Number.isFinite(value) ? String(Number(value.toPrecision(4))) : String(value);
}

// The tile's channel number: from numbers when the tiles are a chosen few.
function numberOf(data, place) {
  return data.numbers ? data.numbers[place] : place;
}

// The place (tile), x and y under a pointer at (px, py) in montage pixels, or null on a gap.
function locate(data, px, py) {
  const step = { x: data.width + data.gap, y: data.height + data.gap };
  const column = Math.floor(px / step.x);
  const row = Math.floor(py / step.y);
  const x = px - column * step.x;
  const y = py - row * step.y;
  const place = row * data.columns + column;
  if (x >= data.width || y >= data.height || column >= data.columns || place >= data.channels) {
    return null;
  }
  return { place, x, y };
}

// The spot under a mouse event on the picture, or null.
function spotAt(view, img, event) {
  const data = view.cnnlensData;
  const box = img.getBoundingClientRect();
  const px = Math.floor(((event.clientX - box.left) / box.width) * img.naturalWidth);
  const py = Math.floor(((event.clientY - box.top) / box.height) * img.naturalHeight);
  return data && locate(data, px, py);
}

function build(parent) {
  const view = document.createElement("div");
  view.className = "cnnlens-map";
  view.innerHTML = `
    <div class="cnnlens-map-title"></div>
    <div class="cnnlens-map-body">
      <div class="cnnlens-map-frame"><div class="cnnlens-map-stack">
        <img class="cnnlens-map-under" alt="" hidden><img class="cnnlens-map-maps" alt="">
        <div class="cnnlens-map-marks"></div>
        <div class="cnnlens-map-tip" hidden></div>
      </div></div>
      <div class="cnnlens-map-scale" hidden>
        <span class="cnnlens-map-high"></span><div class="cnnlens-map-ramp"></div>
        <span class="cnnlens-map-low"></span>
      </div>
    </div>
    <div class="cnnlens-map-legend" hidden><span class="cnnlens-map-strip"></span><span></span></div>
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
    const spot = spotAt(view, img, event);
    if (!spot) {
      tip.hidden = true;
      return;
    }
    const words = data.channels > 1 ? [`channel ${numberOf(data, spot.place)}`] : [];
    words.push(`x ${spot.x}`, `y ${spot.y}`);
    if (data.values) {
      // Decoded on the first hover, not on every rerun: most new images are only looked at.
      view.cnnlensValues = view.cnnlensValues || decodeValues(data.values);
      const at = (spot.place * data.height + spot.y) * data.width + spot.x;
      words.push(`value ${format(view.cnnlensValues[at])}`);
    }
    tip.textContent = words.join(" · ");
    tip.hidden = false;
    const box = img.getBoundingClientRect();
    tip.style.left = `${event.clientX - box.left + 12}px`;
    tip.style.top = `${event.clientY - box.top + 12}px`;
  });
  img.addEventListener("mouseleave", () => {
    tip.hidden = true;
  });
  img.addEventListener("click", (event) => {
    const data = view.cnnlensData;
    if (!data || !data.clickable || !view.cnnlensPick) return;
    const spot = spotAt(view, img, event);
    if (!spot) return;
    const channel = numberOf(data, spot.place);
    view.cnnlensRevealAt = data.reveal ? [spot.x, spot.y] : null;
    view.cnnlensPick("picked", { channel, x: spot.x, y: spot.y });
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

// A box over a part of the picture, placed in percent so it follows the picture's size.
function mark(layer, className, data, box) {
  const wide = data.columns * (data.width + data.gap) - data.gap;
  const rows = Math.ceil(data.channels / data.columns);
  const tall = rows * (data.height + data.gap) - data.gap;
  const element = document.createElement("div");
  element.className = className;
  element.style.left = `${(box.left / wide) * 100}%`;
  element.style.top = `${(box.top / tall) * 100}%`;
  element.style.width = `${(box.width / wide) * 100}%`;
  element.style.height = `${(box.height / tall) * 100}%`;
  layer.appendChild(element);
  return element;
}

function tileBox(data, place) {
  return {
    left: (place % data.columns) * (data.width + data.gap),
    top: Math.floor(place / data.columns) * (data.height + data.gap),
    width: data.width,
    height: data.height,
  };
}

// The tiles' edges and numbers, the chosen tile's outline and the picked point's marker.
function showMarks(view, data) {
  const layer = view.querySelector(".cnnlens-map-marks");
  layer.replaceChildren();
  // Signed maps are near-white at zero, as the clear gaps are on a light page: edge them.
  if (data.signed && data.channels > 1) {
    for (let place = 0; place < data.channels; place++) {
      mark(layer, "cnnlens-map-edge", data, tileBox(data, place));
    }
  }
  if (data.numbered) {
    for (let place = 0; place < data.channels; place++) {
      const label = mark(layer, "cnnlens-map-number", data, tileBox(data, place));
      label.style.width = label.style.height = ""; // as small as its number
      label.textContent = String(numberOf(data, place));
    }
  }
  const places = Array.from({ length: data.channels }, (_, place) => numberOf(data, place));
  const chosen = data.chosen == null ? -1 : places.indexOf(data.chosen);
  if (chosen >= 0) mark(layer, "cnnlens-map-chosen", data, tileBox(data, chosen));
  if (data.point) {
    const [x, y] = data.point;
    const cell = { left: x, top: y, width: 1, height: 1 };
    mark(layer, "cnnlens-map-point", data, cell).dataset.point = `${x},${y}`;
  }
}

// After a click that asks for it, bring the element keyed data.reveal into view once
// the rerun shows the point picked (the explanation is drawn by then, above or below).
function revealIfPicked(view, data) {
  const at = view.cnnlensRevealAt;
  if (!at || !data.point || data.point[0] !== at[0] || data.point[1] !== at[1]) return;
  view.cnnlensRevealAt = null;
  const key = data.reveal.replace(/[^a-zA-Z0-9_-]/g, "-");
  const go = () => {
    const target = document.querySelector(`.st-key-${key}`);
    if (!target) return;
    target.style.scrollMarginTop = "4.5rem"; // below Streamlit's header
    target.scrollIntoView({ block: "start", behavior: "instant" });
  };
  requestAnimationFrame(() => requestAnimationFrame(go));
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
  showMarks(view, data);
  const scale = view.querySelector(".cnnlens-map-scale");
  scale.hidden = !data.colorbar;
  if (data.colorbar) {
    scale.style.height = `${Math.min(data.max_height, 320)}px`;
    view.querySelector(".cnnlens-map-ramp").style.background =
      `linear-gradient(to top, ${data.colorbar.join(", ")})`;
    view.querySelector(".cnnlens-map-high").textContent = format(data.high);
    view.querySelector(".cnnlens-map-low").textContent = format(data.low);
  }
  const legend = view.querySelector(".cnnlens-map-legend");
  legend.hidden = !data.legend;
  if (data.legend) {
    legend.firstElementChild.style.background =
      `linear-gradient(to right, ${data.legend.colours.join(", ")})`;
    legend.lastElementChild.textContent = data.legend.words;
  }
}

export default function (component) {
  const { data, parentElement } = component;
  if (!data) return;
  // An image under the maps: the maps alone, and beside them the same maps over it.
  const panels = data.under
    ? [
        { ...data, under: null },
        {
          ...data,
          png: data.overlay || data.png,
          title: data.under_title,
          colorbar: null,
          legend: data.legend && { ...data.legend, words: data.legend.overlay_words },
          clickable: false,
        },
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
    revealIfPicked(view, panel);
  });
  while (row.children.length > panels.length) row.lastElementChild.remove();
}
