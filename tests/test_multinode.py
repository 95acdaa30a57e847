"""train_ldm.py on two "machines": two torchrun agents on localhost, one per node (--nnodes 2 --nproc-per-node 1
--node-rank 0 / 1), meeting at a c10d rendezvous on 127.0.0.1. Each node's one process has LOCAL_RANK 0, so the
process of global rank 1 is a local rank 0 that must not write: the run trains what one process with the doubled
batch trains, only global rank 0 writes its run folder, and --data microdoppler is simulated once per file system.

The two nodes are given different --out folders, which stands in for machines that share no file system: each
node's simulated data lies next to its own --out, and nothing appears in the --out of the node that is not rank 0.
(With c10d, torchrun numbers the nodes itself, in the order of their addresses and process ids, so which of the two
becomes global rank 0 is not decided by --node-rank; the test finds out from the folders.)"""
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_ldm
from ldm import logs
from ldm.vae import AutoencoderKL, VAEConfig

ROOT = Path(__file__).resolve().parents[1]
SIM = "microdoppler-64px-2x5-seed0"   # the folder resolve_data simulates for --size 64, 2 users x 5, seed 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_vae(path: Path) -> Path:
    """A tiny random one-channel KL VAE with f = 8, so the simulator's 64x64 spectrograms give 8x8 latents."""
    torch.manual_seed(0)
    config = dataclasses.replace(VAEConfig.preset("tiny"), in_channels=1, out_channels=1, sample_size=64,
                                 block_out_channels=(16, 16, 16, 16), norm_num_groups=8, scaling_factor=0.5)
    AutoencoderKL(config).save_pretrained(path)
    return path


def run_args(vae: Path, out: Path, batch_size: int) -> list[str]:
    return ["--data", "microdoppler", "--sim-users", "2", "--sim-per-user", "5", "--size", "64", "--vae", str(vae),
            "--out", str(out), "--preset", "tiny", "--batch-size", str(batch_size), "--val-fraction", "0.2",
            "--steps", "3", "--log-every", "1", "--sample-every", "100", "--sample-steps", "2",
            "--sample-per-user", "1", "--device", "cpu", "--p-uncond", "0.5", "--no-progress"]


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous_match_one_process_and_only_rank0_writes(tmp_path):
    vae = save_vae(tmp_path / "vae")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    port = free_port()
    nodes = []
    for node_rank in (0, 1):
        out = tmp_path / f"node{node_rank}" / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", "ldm-multinode-test", "--local-addr", "127.0.0.1", str(ROOT / "train_ldm.py"),
               *run_args(vae, out, batch_size=2)]
        nodes.append((out, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True)))
    outputs = []
    try:
        for _, proc in nodes:
            outputs.append(proc.communicate(timeout=180)[0])
    finally:
        for _, proc in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for (_, proc), log in zip(nodes, outputs):
        assert proc.returncode == 0, log[-3000:]

    # exactly one node (the one whose process became global rank 0) wrote a run folder; the other wrote nothing
    written = [out for out, _ in nodes if out.exists()]
    assert len(written) == 1, f"run folders written: {written}"
    assert sorted(p.name for p in written[0].iterdir()) == ["checkpoint.pt", "class_to_idx.json", "config.json",
                                                            "log.jsonl", "loss.png", "pipeline", "samples",
                                                            "split.json"]
    assert sum("alone writes" in log for log in outputs) == 1
    # each "machine" simulated the data next to its own --out (its local rank 0 saw no folder there), identically
    sims = [out.parent / SIM for out, _ in nodes]
    assert all((folder / "metadata.json").is_file() for folder in sims)
    files = [sorted(p.relative_to(folder) for p in folder.rglob("*.npy")) for folder in sims]
    assert files[0] == files[1] and len(files[0]) == 10
    for name in files[0][:3]:
        np.testing.assert_array_equal(np.load(sims[0] / name), np.load(sims[1] / name))

    # one process with the doubled batch trains the same (up to the gradient all-reduce's float rounding)
    single = tmp_path / "single" / "run"
    assert train_ldm.main(run_args(vae, single, batch_size=4)) == 0
    losses = lambda run: [r["loss"] for r in logs.JsonlLog(run / "log.jsonl").read() if "loss" in r]  # noqa: E731
    assert len(losses(single)) == 3
    np.testing.assert_allclose(losses(written[0]), losses(single), rtol=1e-4)
    assert json.loads((written[0] / "split.json").read_text()) == json.loads((single / "split.json").read_text())
