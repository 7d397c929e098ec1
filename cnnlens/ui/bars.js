// Bars that pick (cnnlens.ui.bars.bars_ui): the HTML of bars_html, and a click anywhere in
// a bar's column (above a short bar, or on its number below) sends that bar's data-label
// back as the "picked" trigger. Data: html. The snippet is swapped only when it changes.

function pickAt(box, event) {
  const bars = Array.from(box.querySelectorAll("[data-label]"));
  if (!bars.length) return null;
  const area = bars[0].parentElement;
  const names = area.nextElementSibling;
  const top = area.getBoundingClientRect();
  const bottom = names ? names.getBoundingClientRect().bottom : top.bottom;
  if (event.clientY < top.top || event.clientY > bottom) return null;
  if (event.clientX < top.left || event.clientX >= top.right) return null;
  const place = Math.floor(((event.clientX - top.left) / top.width) * bars.length);
  return bars[Math.min(place, bars.length - 1)].dataset.label;
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  if (!data) return;
  let box = parentElement.querySelector(".cnnlens-bars");
  if (!box) {
    box = document.createElement("div");
    box.className = "cnnlens-bars";
    box.style.cursor = "pointer";
    parentElement.appendChild(box);
    box.addEventListener("click", (event) => {
      const label = pickAt(box, event);
      if (label != null && box.cnnlensPick) box.cnnlensPick("picked", label);
    });
  }
  box.cnnlensPick = setTriggerValue;
  if (box.cnnlensHtml !== data.html) {
    box.innerHTML = data.html;
    box.cnnlensHtml = data.html;
  }
}
