"""Training judged on what it exports, on held-out data that is not the simulator: PIL-drawn shapes, one class per
shape (tests/helpers.py: shapes_folder). The simulator's long demo runs once hid an EMA that still held most of its
random initialisation; these short runs would not hide it:
- a short train_vae.py run exports a model that reconstructs held-out images within 1 dB of its raw weights;
- a short train_ldm.py run on that VAE generates shapes that a classifier trained on the real images recognises
  well above chance."""
from pathlib import Path

import pytest
import torch

import sample
import train_ldm
import train_vae
from ldm import io, metrics, training
from ldm.radar import identity
from ldm.data import SpectrogramFolder
from ldm.splits import read_split
from tests.helpers import SHAPES, shapes_folder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]   # see tests/conftest.py


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return shapes_folder(tmp_path_factory.mktemp("shapes"), per_class=40, size=32)


@pytest.fixture(scope="module")
def vae_run(shapes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vae"
    assert train_vae.main(["--data", str(shapes), "--out", str(out), "--preset", "tiny", "--size", "32",
                           "--steps", "200", "--batch-size", "16", "--lr", "5e-4", "--disc-weight", "0",
                           "--no-eval-classifier", "--eval-every", "1000", "--sample-every", "1000",
                           "--checkpoint-every", "1000", "--device", "cpu", "--no-progress"]) == 0
    return out


def held_out(shapes: Path, run: Path, part: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    return SpectrogramFolder(shapes, size=32, subset=read_split(run)[part], cache=True).tensors()


@torch.no_grad()
def mean_psnr(model, x: torch.Tensor) -> float:
    x_rec = model(x)[0].clamp(-1, 1)
    return float(metrics.psnr((x_rec + 1) / 2, (x + 1) / 2).mean())


def test_a_short_vae_run_exports_weights_as_good_as_its_raw_weights(shapes, vae_run):
    x_test, _ = held_out(shapes, vae_run)
    exported = io.load_pretrained(vae_run / "model").eval()
    raw = io.load_pretrained(vae_run / "model").eval()
    raw.load_state_dict(training.load_checkpoint(vae_run)["model"])
    exported_psnr, raw_psnr = mean_psnr(exported, x_test), mean_psnr(raw, x_test)
    assert raw_psnr > 20, f"the raw weights learnt little: {raw_psnr:.1f} dB"
    assert exported_psnr > raw_psnr - 1.0, f"exported {exported_psnr:.2f} dB vs raw {raw_psnr:.2f} dB"


def test_a_short_ldm_run_generates_shapes_a_real_data_classifier_recognises(shapes, vae_run, tmp_path):
    run, generated = tmp_path / "ldm", tmp_path / "generated"
    assert train_ldm.main(["--data", str(shapes), "--vae", str(vae_run), "--out", str(run), "--preset", "tiny",
                           "--unet-channels", "32,64", "--unet-attention", "0,1", "--context-dim", "64",
                           "--steps", "400", "--batch-size", "32", "--lr", "1e-3", "--cache-latents",
                           "--posterior", "mean", "--sample-every", "1000", "--eval-every", "1000",
                           "--checkpoint-every", "1000", "--device", "cpu", "--no-progress"]) == 0
    assert sample.main(["--model", str(run / "pipeline"), "--user", "all", "--num", "16", "--steps", "20",
                        "--guidance", "3", "--out", str(generated), "--device", "cpu", "--no-progress"]) == 0
    x_train, y_train = held_out(shapes, vae_run, "train")
    x_test, y_test = held_out(shapes, vae_run, "test")
    config = identity.ClassifierConfig(num_classes=len(SHAPES), image_size=32, min_steps=200)
    classifier = identity.train_classifier(x_train, y_train, config)
    real_accuracy = float((identity.predict(classifier, x_test)[0].argmax(1) == y_test).float().mean())
    assert real_accuracy >= 0.9, f"the classifier itself fails on real held-out shapes: {real_accuracy:.0%}"
    x_gen, y_gen = SpectrogramFolder(generated, size=32, class_to_idx=read_split(vae_run)["class_to_idx"]).tensors()
    accuracy = float((identity.predict(classifier, x_gen)[0].argmax(1) == y_gen).float().mean())
    assert accuracy >= 0.5, f"generated shapes recognised {accuracy:.0%} of the time (chance 25%)"
