"""sample.py on a pipeline folder built from tiny random components: the files it writes, per-user reproducibility,
user names and numbers, and clear errors that write nothing."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from ldm import io
from ldm.conditioning import UserIDEmbedder
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from train_ldm import make_scheduler

USERS = {"alice": 0, "bob": 1, "carol": 2}


def build_pipeline(path, vae_latent_channels: int = 4):
    torch.manual_seed(0)
    vae = AutoencoderKL(dataclasses.replace(VAEConfig.preset("tiny"), in_channels=1, out_channels=1, sample_size=16,
                                            latent_channels=vae_latent_channels, scaling_factor=0.5))
    unet = UNet2DConditionModel(dataclasses.replace(UNetConfig.preset("tiny"), sample_size=8, num_class_embeds=4))
    embedder = UserIDEmbedder(3, 32, 4, "both", USERS)
    io.save_pipeline(path, {"vae": vae, "unet": unet, "scheduler": make_scheduler("epsilon"), "embedder": embedder})
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return build_pipeline(tmp_path_factory.mktemp("pipe") / "pipeline")


def args(model, out, *extra):
    return ["--model", str(model), "--out", str(out), "--steps", "2", "--batch-size", "2", "--no-progress", *extra]


def test_all_users_get_pngs_npys_and_a_grid_row(pipeline, tmp_path):
    out = tmp_path / "s"
    assert sample.main(args(pipeline, out, "--user", "all", "--num", "3", "--save-npy")) == 0
    for user in USERS:
        pngs = sorted((out / user).glob("*.png"))
        assert [p.name for p in pngs] == ["0.png", "1.png", "2.png"]
        png = np.asarray(Image.open(pngs[0]), dtype=np.float32) / 255
        npy = np.load(out / user / "0.npy")
        assert npy.shape == (1, 16, 16) and npy.dtype == np.float32
        assert np.abs(png - npy[0]).max() <= 0.5 / 255 + 1e-6          # the PNG is the .npy rounded to 8 bits
    assert sorted(p.name for p in out.iterdir()) == sorted(USERS)      # evaluate.py needs pure user folders
    assert Image.open(tmp_path / "s_grid.png").size == (2 + 3 * 18, 2 + 3 * 18)  # 3 users x 3 images


def test_one_user_by_name_or_number_gets_the_images_it_gets_in_all(pipeline, tmp_path):
    assert sample.main(args(pipeline, tmp_path / "all", "--user", "all", "--num", "2", "--sampler", "ddpm")) == 0
    assert sample.main(args(pipeline, tmp_path / "name", "--user", "bob", "--num", "2", "--sampler", "ddpm")) == 0
    assert sample.main(args(pipeline, tmp_path / "num", "--user", "1", "--num", "2", "--sampler", "ddpm")) == 0
    assert sorted(p.name for p in (tmp_path / "name").iterdir()) == ["bob"]
    assert (tmp_path / "name_grid.png").is_file()
    for i in range(2):
        files = [(tmp_path / run / "bob" / f"{i}.png").read_bytes() for run in ("all", "name", "num")]
        assert files[0] == files[1] == files[2]
    assert (tmp_path / "all" / "alice" / "0.png").read_bytes() != (tmp_path / "all" / "bob" / "0.png").read_bytes()


def test_unknown_user_lists_the_valid_ones_and_writes_nothing(pipeline, tmp_path, capsys):
    out = tmp_path / "s"
    assert sample.main(args(pipeline, out, "--user", "dave")) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown user 'dave'; valid users are 'all' or one of: 0=alice, 1=bob, 2=carol\n"
    assert not out.exists()


def test_a_pipeline_whose_vae_does_not_fit_the_unet_is_refused(tmp_path, capsys):
    bad = build_pipeline(tmp_path / "bad", vae_latent_channels=3)
    assert sample.main(args(bad, tmp_path / "s")) == 2
    assert "latent channels" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert sample.main(args(tmp_path / "nowhere", tmp_path / "s")) == 2
    assert "model_index.json" in capsys.readouterr().err


def test_cuda_graph_without_a_cuda_device_is_refused_before_any_work(pipeline, tmp_path, capsys):
    out = tmp_path / "s"
    assert sample.main(args(pipeline, out, "--device", "cpu", "--cuda-graph")) == 2
    assert capsys.readouterr().err == "error: --cuda-graph needs a CUDA device, got --device cpu\n"
    assert not out.exists()


@pytest.mark.gpu
def test_cuda_graph_gives_the_eager_images(pipeline, tmp_path):
    """sample.py --cuda-graph on a GPU: the user-ID embedder and the class-labelled UNet capture without a host sync,
    and the images equal the eager ones (per user, batch 2 and a last batch of 1)."""
    for flag in ([], ["--cuda-graph"]):
        assert sample.main(args(pipeline, tmp_path / f"s{len(flag)}", "--device", "cuda", "--num", "3",
                                "--save-npy", *flag)) == 0
    for user in USERS:
        for i in range(3):
            eager, graphed = (np.load(tmp_path / f"s{n}" / user / f"{i}.npy") for n in (0, 1))
            assert np.abs(graphed - eager).max() <= 1e-5 * max(np.abs(eager).max(), 1e-6), (user, i)
