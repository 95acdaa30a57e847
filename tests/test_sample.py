"""sample.py on a pipeline folder built from tiny random components: the files it writes, per-user reproducibility,
user names and numbers, clear errors that write nothing, and --filter writing only the samples it keeps."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from ldm import io
from ldm.radar import simulator as md
from ldm.conditioning import UserIDEmbedder
from ldm.data import SpectrogramFolder
from ldm.splits import make_split, write_split
from ldm.radar.identity import ClassifierConfig, EvalCNN, load_classifier, predict, save_classifier
from ldm.radar.physics import batch_physics_features
from ldm.pipeline import PIPELINE_CLASS, Pipeline
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from train_ldm import make_scheduler

USERS = {"alice": 0, "bob": 1, "carol": 2}
pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


def build_pipeline(path, vae_latent_channels: int = 4, latent_size=8):
    torch.manual_seed(0)
    vae = AutoencoderKL(dataclasses.replace(VAEConfig.preset("tiny"), in_channels=1, out_channels=1, sample_size=16,
                                            latent_channels=vae_latent_channels, scaling_factor=0.5))
    unet = UNet2DConditionModel(dataclasses.replace(UNetConfig.preset("tiny"), sample_size=latent_size,
                                                    num_class_embeds=4))
    embedder = UserIDEmbedder(3, 32, 4, "both", USERS)
    io.save_pipeline(path, {"vae": vae, "unet": unet, "scheduler": make_scheduler("epsilon"), "embedder": embedder},
                     pipeline_class=PIPELINE_CLASS)   # not Pipeline.save_pretrained: some tests need a bad folder
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


def test_sampler_dpm_solver_writes_the_images_generate_makes_with_it(pipeline, tmp_path):
    """--sampler dpm++2m: the images of Pipeline.generate with sampler="dpm++2m", not DDIM's."""
    out = tmp_path / "dpm"
    assert sample.main(args(pipeline, out, "--user", "bob", "--num", "2", "--save-npy", "--sampler", "dpm++2m",
                            "--steps", "3", "--device", "cpu")) == 0
    images = Pipeline.from_pretrained(pipeline).generate([1], 2, steps=3, guidance=3.0, sampler="dpm++2m", seed=0,
                                                         batch_size=2, progress=False)[1]
    written = torch.from_numpy(np.stack([np.load(out / "bob" / f"{i}.npy") for i in range(2)])) * 2 - 1
    torch.testing.assert_close(written, images, rtol=0, atol=1e-6)  # .npy holds (x + 1) / 2 in float32
    assert sample.main(args(pipeline, tmp_path / "ddim", "--user", "bob", "--num", "2", "--save-npy",
                            "--steps", "3")) == 0
    assert not np.array_equal(np.load(tmp_path / "ddim" / "bob" / "0.npy"), np.load(out / "bob" / "0.npy"))


def test_the_record_holds_the_resolved_options_and_a_rerun_into_out_is_refused_or_moves_it_aside(pipeline, tmp_path,
                                                                                                capsys):
    out = tmp_path / "s"
    assert sample.main(args(pipeline, out, "--user", "alice,bob", "--num", "2", "--device", "auto")) == 0
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["options"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")    # auto, resolved
    assert (record["options"]["num"], record["options"]["steps"], record["options"]["user"]) == (2, 2, "alice,bob")
    assert record["users"] == {"alice": 0, "bob": 1} and record["images"] == {"alice": 2, "bob": 2}
    alice = (out / "alice" / "0.png").read_bytes()
    # A second run into the same OUT would mix two runs that evaluate.py scores as one: refused, nothing changes.
    capsys.readouterr()
    assert sample.main(args(pipeline, out, "--user", "bob", "--num", "3", "--seed", "7")) == 2
    assert capsys.readouterr().err == (f"error: --out {out} already holds files (alice, bob); choose a new --out, or "
                                       "pass --overwrite to move the old folder aside to s.old-<time> (a folder "
                                       "mixing two runs would be evaluated as one)\n")
    assert (out / "alice" / "0.png").read_bytes() == alice and json.loads((tmp_path / "s.json").read_text()) == record
    # --overwrite: the old run moved aside whole, OUT holds the new run only, the record describes it
    assert sample.main(args(pipeline, out, "--user", "bob", "--num", "3", "--seed", "7", "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bob"]
    assert sorted(p.name for p in (out / "bob").iterdir()) == ["0.png", "1.png", "2.png"]
    assert json.loads((tmp_path / "s.json").read_text())["images"] == {"bob": 3}
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("s.old-")]
    assert len(aside) == 1 and (aside[0] / "alice" / "0.png").read_bytes() == alice
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s", "s.json", "s_grid.png", aside[0].name])


def test_a_non_square_pipeline_makes_images_of_its_size(tmp_path):
    """A UNet trained on (h, w) = (8, 4) latents (train_ldm.py stores that as its sample_size): 16 x 8 images."""
    pipeline = build_pipeline(tmp_path / "wide", latent_size=(8, 4))
    assert sample.main(args(pipeline, tmp_path / "s", "--user", "bob", "--num", "1", "--save-npy")) == 0
    assert np.load(tmp_path / "s" / "bob" / "0.npy").shape == (1, 16, 8)
    assert Image.open(tmp_path / "s" / "bob" / "0.png").size == (8, 16)              # PIL: (width, height)


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


# ----------------------------------------------------------------------------------------------------------------
# --filter: only kept samples are written
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """An untrained (random) EvalCNN for the pipeline's users: its margins vary from sample to sample."""
    torch.manual_seed(1)
    model = EvalCNN(ClassifierConfig(num_classes=3, image_size=16, widths=(4, 8))).eval()
    path = tmp_path_factory.mktemp("clf") / "clf.safetensors"
    save_classifier(model, str(path), USERS)
    return path


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Simulated walkers in folders named like the pipeline's users, with a split."""
    root = tmp_path_factory.mktemp("real")
    db, labels, meta = md.simulate_dataset(users=3, per_user=8, size=64, seed=0)
    for spectrogram, label, entry in zip(db, labels, meta["samples"]):
        folder = root / "data" / sorted(USERS, key=USERS.get)[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(md.db_to_uint8(spectrogram, 50.0)).save(folder / f"{entry['index']:04d}.png")
    write_split(root / "split.json", make_split(root / "data"))
    return root


def unfiltered_images(folder, user, num):
    """The unfiltered run's images of one user, (num, 1, 16, 16) in [-1, 1], from its float .npy files."""
    return torch.from_numpy(np.stack([np.load(folder / user / f"{i}.npy") for i in range(num)])) * 2 - 1


def assert_only_kept(all_dir, kept_dir, expected: dict, text: str, num: int):
    for user, keep in expected.items():
        names = {f"{i}.png" for i in range(num) if keep[i]}
        written = {p.name for p in (kept_dir / user).glob("*")} if (kept_dir / user).exists() else set()
        assert written == names | {n.replace(".png", ".npy") for n in names}, user
        for name in written:                                             # the unfiltered run's very files
            assert (kept_dir / user / name).read_bytes() == (all_dir / user / name).read_bytes()
        assert f"{user}: kept {len(names)} of {num}" in text


def test_margin_filter_writes_exactly_the_samples_the_classifier_prefers(pipeline, classifier, tmp_path, capsys):
    num, threshold = 6, 0.02
    assert sample.main(args(pipeline, tmp_path / "all", "--num", str(num), "--save-npy")) == 0
    assert sample.main(args(pipeline, tmp_path / "kept", "--num", str(num), "--save-npy", "--filter", "margin",
                            "--classifier", str(classifier), "--margin-threshold", str(threshold))) == 0
    model, _ = load_classifier(str(classifier))
    expected = {}
    for user, label in USERS.items():
        probs = predict(model, unfiltered_images(tmp_path / "all", user, num))[0].double()       # (num, 3)
        others = torch.cat([probs[:, :label], probs[:, label + 1:]], dim=1)
        margin = probs[:, label] - others.max(dim=1).values
        assert ((margin - threshold).abs() > 1e-4).all()                # no sample on the edge of the rule
        expected[user] = (margin > threshold).tolist()
    kept = sum(sum(keep) for keep in expected.values())
    assert 0 < kept < 3 * num
    assert_only_kept(tmp_path / "all", tmp_path / "kept", expected, capsys.readouterr().out, num)


def test_physics_filter_keeps_samples_inside_each_users_real_range(pipeline, real, tmp_path, capsys):
    num, tolerance = 6, 40.0
    assert sample.main(args(pipeline, tmp_path / "all", "--num", str(num), "--save-npy")) == 0
    assert sample.main(args(pipeline, tmp_path / "kept", "--num", str(num), "--save-npy", "--filter", "physics",
                            "--real", str(real / "data"), "--split", str(real / "split.json"),
                            "--v-max", "6.25", "--duration", "2.56", "--physics-tolerance", str(tolerance))) == 0
    # The rule, computed here from the split's real train files: each user's min..max of torso velocity and
    # cadence, widened by tolerance x the pooled within-user standard deviation.
    split = json.loads((real / "split.json").read_text())
    axes = (6.25 - (np.arange(16) + 0.5) * 12.5 / 16, 16 / 2.56)
    x_real, y_real = SpectrogramFolder(real / "data", size=16, subset=split["train"]).tensors()
    real_features = batch_physics_features(x_real, axes, 50.0)
    expected = {}
    for user, label in USERS.items():
        features = batch_physics_features(unfiltered_images(tmp_path / "all", user, num), axes, 50.0)
        keep = np.ones(num, dtype=bool)
        for key in ("torso_velocity_mps", "cadence_steps_per_s"):
            values = np.array([f[key] for f in real_features])
            groups = [values[(y_real.numpy() == k) & np.isfinite(values)] for k in range(3)]
            pooled = np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / (sum(map(len, groups)) - 3))
            low, high = groups[label].min() - tolerance * pooled, groups[label].max() + tolerance * pooled
            candidate = np.array([f[key] for f in features])
            keep &= (candidate >= low) & (candidate <= high)
        expected[user] = keep.tolist()
    assert 0 < sum(sum(keep) for keep in expected.values()) < 3 * num   # noise images: only the loose ends pass
    assert_only_kept(tmp_path / "all", tmp_path / "kept", expected, capsys.readouterr().out, num)


def test_filter_options_are_checked_before_generating(pipeline, classifier, real, tmp_path, capsys):
    out = tmp_path / "s"
    other_users = tmp_path / "other.safetensors"
    save_classifier(EvalCNN(ClassifierConfig(num_classes=2)), str(other_users), {"alice": 0, "bob": 1})
    other_data = tmp_path / "other"
    shutil.copytree(real / "data", other_data)
    (other_data / "alice" / "0000.png").unlink()
    cases = [(["--filter", "margin"], "--filter margin needs --classifier"),
             (["--filter", "margin", "--classifier", str(tmp_path / "none.safetensors")], "does not exist"),
             (["--filter", "margin", "--classifier", str(other_users)], "knows users"),
             (["--classifier", str(classifier)], "--classifier is used by --filter margin only"),
             (["--filter", "physics"], "--filter physics needs --real DATA and --split"),
             (["--filter", "physics", "--real", str(real / "data"), "--split", str(real / "split.json")],
              "needs --v-max and --duration"),
             (["--filter", "physics", "--real", str(other_data), "--split", str(real / "split.json"), "--v-max", "6",
               "--duration", "2"], "not the data folder the split was made for")]
    for extra, message in cases:
        assert sample.main(args(pipeline, out, *extra)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
    (out / "bob").mkdir(parents=True)
    (out / "bob" / "0.png").write_bytes(b"old")
    assert sample.main(args(pipeline, out, "--filter", "margin", "--classifier", str(classifier))) == 2
    assert f"--out {out} already holds files (bob); choose a new --out" in capsys.readouterr().err
