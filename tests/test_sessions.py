"""Eight browser sessions at once on one server, each on its own image.

One cached lens serves every session; each must get its own image's maps.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from cnnlens import build_lens, demo_dataset, demo_model, to_batch
from tests import live_app

pytestmark = pytest.mark.browser

SEEDS = list(range(300, 308))
LAYER = "conv_2"

# Every raw value of the grid's map view, C·H·W in C order (see tests/live_app.py).
_RAW_GRID_JS = """
() => {
  const view = document.querySelector(".st-key-grid .cnnlens-map");
  if (!view || !view.cnnlensData || !view.cnnlensData.values) return null;
  const text = atob(view.cnnlensData.values);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return Array.from(new Float32Array(bytes.buffer));
}
"""


@pytest.fixture(scope="module")
def server():
    if not live_app.CHROMIUM.exists():
        message = f"{live_app.CHROMIUM} is missing: apt-get install chromium (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with live_app.running_server() as running:
        yield running


async def _open_sessions(url: str) -> list[np.ndarray]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(live_app.CHROMIUM), args=list(live_app.CHROMIUM_ARGS)
        )
        try:
            pages = [await (await browser.new_context()).new_page() for _ in SEEDS]

            async def one(page, seed: int) -> np.ndarray:
                await page.goto(f"{url}/feature_maps?seed={seed}&layers={LAYER}&layer={LAYER}")
                await page.wait_for_selector(live_app.IDLE_SELECTOR, timeout=90_000)
                await page.wait_for_function(_RAW_GRID_JS, timeout=90_000)
                raw = await page.evaluate(_RAW_GRID_JS)
                return np.array(raw, dtype=np.float64)

            return await asyncio.gather(*(one(p, s) for p, s in zip(pages, SEEDS, strict=True)))
        finally:
            await browser.close()


def test_eight_sessions_at_once_each_get_their_own_images_maps(server):
    grids = asyncio.run(_open_sessions(server.url))
    dataset = demo_dataset()
    names = [dataset.pick(seed) for seed in SEEDS]
    assert len(set(names)) == len(SEEDS)
    lens = build_lens(demo_model(), [LAYER])
    for name, grid in zip(names, grids, strict=True):
        expected = lens(to_batch(dataset.load_image(name)))[LAYER][0].numpy()
        np.testing.assert_allclose(grid, expected.ravel(), atol=1e-5, rtol=1e-5)
    assert "Traceback" not in server.log_tail(100_000)
