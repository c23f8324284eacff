"""End to end under a real MONAI Label 0.8.5 server: every bundle and every label view, 2D and 3D.

Needs the MONAI Label environment (``bash apps/monailabel/setup_env.sh``, about 8 GB): the virtualenv named by
``MONAILABEL_ENV``, else ``.venv-monailabel`` at the repository root. Without it the test is skipped with the
reason printed (CI has no such environment; the contract tests in ``test_monailabel_contract.py`` run there).

Each bundle is copied into a scratch ``bundles/`` folder with a ``model.pt`` of its ``network_def`` (freshly
initialised: serving does not depend on what was learned, and the harness checks trained files separately), plus a
3D copy of each holding a 3D model, and a copy of ``fused_unet`` whose pre-processing resamples (``Spacingd``). The app is started on loopback, ``/info/`` must list
every bundle and view with its labels, and ``/infer/<task>`` must return, for every task, a label file with the
input's shape and affine whose values are background or one of the task's labels.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from multirater_monai.serving import BundleInference
from test_monailabel_contract import scratch_bundle, with_spacing

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


def _environment() -> Path | None:
    env = Path(os.environ.get("MONAILABEL_ENV", ROOT / ".venv-monailabel"))
    return env if (env / "bin" / "monailabel").is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _post(url: str, timeout: float = 300) -> bytes:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


@pytest.mark.slow
def test_every_bundle_and_view_served_by_monailabel(tmp_path):
    env = _environment()
    if env is None:
        reason = "MONAI Label environment absent: run `bash apps/monailabel/setup_env.sh` (or set MONAILABEL_ENV)"
        print(reason)
        pytest.skip(reason)
    bundles = tmp_path / "bundles"
    for name in BUNDLES:
        scratch_bundle(name, bundles / name)
        scratch_bundle(name, bundles / f"{name}_3d", variant="3d.json")
    # a bundle that resamples its input (MONAI's Spacingd meets MONAI Label's image_path)
    scratch_bundle("fused_unet", bundles / "fused_unet_spacing", edit=with_spacing)
    studies = tmp_path / "studies"
    studies.mkdir()
    rng = np.random.default_rng(0)
    images = {
        2: (
            studies / "case2d.nii.gz",
            rng.normal(size=(72, 64)).astype(np.float32),
            np.array([[0.7, 0, 0, -20.0], [0, 0.8, 0, 11.0], [0, 0, 1, 0], [0, 0, 0, 1]]),
        ),
        3: (
            studies / "case3d.nii.gz",
            rng.normal(size=(40, 36, 24)).astype(np.float32),
            np.array([[0, -0.9, 0, 30.0], [1.1, 0, 0, -12.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]]),
        ),
    }
    for path, array, affine in images.values():
        nib.save(nib.Nifti1Image(array, affine), path)

    expected: dict[str, tuple[int, dict[str, int]]] = {}
    for folder in sorted(bundles.iterdir()):
        inference = BundleInference(folder)
        expected[folder.name] = (inference.dimension, inference.labels)
        for view in inference.views():
            expected[f"{folder.name}_{view.name}"] = (inference.dimension, dict(view.labels))

    port = _free_port()
    log = tmp_path / "server.log"
    environ = {**os.environ, "PATH": f"{env / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(env)}
    environ.pop("PYTHONPATH", None)
    command = [
        str(env / "bin" / "monailabel"),
        "start_server",
        "--app",
        str(ROOT / "apps" / "monailabel"),
        "--studies",
        str(studies),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--conf",
        "bundles",
        str(bundles),
    ]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environ, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        info = None
        deadline = time.time() + 300
        while time.time() < deadline and server.poll() is None:
            try:
                info = json.loads(_get(f"{base}/info/", timeout=5))
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        assert info is not None, f"server did not answer /info/; log:\n{log.read_text()[-4000:]}"
        models = info["models"]
        assert set(expected) <= set(models), f"not served: {sorted(set(expected) - set(models))}"
        print(f"/info/: {len(models)} infer tasks: {', '.join(sorted(models))}")
        for task, (dims, labels) in sorted(expected.items()):
            assert models[task]["labels"] == labels, task
            assert models[task]["dimension"] == dims, task
            path, array, affine = images[dims]
            image_id = path.name.replace(".nii.gz", "")
            try:
                body = _post(f"{base}/infer/{task}?image={image_id}&output=image")
            except urllib.error.HTTPError as error:
                raise AssertionError(f"/infer/{task}: HTTP {error.code}; log:\n{log.read_text()[-4000:]}") from None
            result = tmp_path / f"{task}.nii.gz"
            result.write_bytes(body)
            label = nib.load(result)
            values = set(np.unique(np.asarray(label.dataobj)).astype(int).tolist())
            assert label.shape == array.shape, (task, label.shape, array.shape)
            np.testing.assert_allclose(label.affine, affine, atol=1e-4, err_msg=task)
            assert values <= {0, *labels.values()}, (task, values)
            print(f"/infer/{task} ({dims}D): shape {label.shape}, affine matches, values {sorted(values)}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
