"""Weights in and out: diffusers folders both ways, original checkpoints both ways, and loading that is safe."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from ldm import files, io
from ldm.convert import diffusers_to_original, original_to_diffusers
from ldm.vae import AutoencoderKL, VAEConfig
from tests.helpers import perturb_
from tests.test_vae import DIFFUSERS_CONFIGS, diffusers_kwargs


def reference_vae(name="rgb_2levels", seed=0):
    torch.manual_seed(seed)
    return perturb_(RefAutoencoderKL(**diffusers_kwargs(DIFFUSERS_CONFIGS[name])), seed=seed).eval()


def images(channels=3, seed=1):
    return torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def assert_same_vae_outputs(ours, ref):
    x = images(ours.config.in_channels)
    assert torch.equal(ours.encode(x).mean, ref.encode(x).latent_dist.mean)
    assert torch.equal(ours(x)[0], ref(x).sample)


# ---- diffusers folders, both ways --------------------------------------------------------------------------------


@pytest.mark.parametrize("save_kwargs", [
    {}, {"safe_serialization": False}, {"variant": "fp16"}, {"max_shard_size": "200KB"},
], ids=["safetensors", "bin", "fp16-variant", "sharded"])
def test_diffusers_folder_loads_in_ldm(tmp_path, save_kwargs):
    ref = reference_vae()
    if "variant" in save_kwargs:
        ref = ref.half()
    ref.save_pretrained(tmp_path, **save_kwargs)
    if "max_shard_size" in save_kwargs:
        assert len(list(tmp_path.glob("*.safetensors"))) > 1, "the reference did not shard"
    ours = io.load_pretrained(tmp_path, variant=save_kwargs.get("variant"))
    assert isinstance(ours, AutoencoderKL)
    assert next(ours.parameters()).dtype == torch.float32   # float32 unless a dtype is asked for
    assert_same_vae_outputs(ours, ref.float())


@pytest.mark.parametrize("save_kwargs", [
    {}, {"safe_serialization": False}, {"variant": "fp16"}, {"max_shard_size": "200KB"},
], ids=["safetensors", "bin", "fp16-variant", "sharded"])
def test_ldm_folder_loads_in_diffusers(tmp_path, save_kwargs):
    ref = reference_vae()
    ours = AutoencoderKL(VAEConfig.from_diffusers(dict(ref.config)))
    ours.load_state_dict(ref.state_dict(), strict=True)
    if "variant" in save_kwargs:
        ours = ours.half()
    ours.save_pretrained(tmp_path, **save_kwargs)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL" and config["_diffusers_version"] == "0.42.1"
    if "max_shard_size" in save_kwargs:
        assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    loaded = RefAutoencoderKL.from_pretrained(tmp_path, variant=save_kwargs.get("variant")).float().eval()
    assert_same_vae_outputs(ours.float().eval(), loaded)


def test_from_pretrained_and_dtype(tmp_path):
    reference_vae().save_pretrained(tmp_path)
    model = AutoencoderKL.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_legacy_attention_names_are_accepted(tmp_path):
    ref = reference_vae()
    legacy = {}
    for key, tensor in ref.state_dict().items():
        for new, old in (("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."), ("to_out.0.", "proj_attn.")):
            key = key.replace("attentions.0." + new, "attentions.0." + old)
        legacy[key] = tensor
    assert any(".query." in k for k in legacy)
    torch.save(legacy, tmp_path / "diffusion_pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **dict(ref.config)}))
    assert_same_vae_outputs(io.load_pretrained(tmp_path), ref)


def test_pipeline_folder_round_trip(tmp_path):
    ref = reference_vae()
    vae = AutoencoderKL(VAEConfig.from_diffusers(dict(ref.config)))
    vae.load_state_dict(ref.state_dict(), strict=True)
    io.save_pipeline(tmp_path, {"vae": vae}, pipeline_class="TestPipeline")
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert_same_vae_outputs(io.load_pipeline(tmp_path)["vae"], ref)
    assert_same_vae_outputs(vae.eval(), RefAutoencoderKL.from_pretrained(tmp_path, subfolder="vae").eval())


# ---- original (CompVis / Stability) layout -----------------------------------------------------------------------


@pytest.mark.parametrize("name", DIFFUSERS_CONFIGS)
def test_our_original_layout_is_what_diffusers_converts_back(name):
    ref = reference_vae(name)
    state_dict = ref.state_dict()
    original = diffusers_to_original(state_dict, "vae", dict(ref.config))
    assert any(k.startswith("decoder.up.0.block.") for k in original) and not any("up_blocks" in k for k in original)
    back = convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in original.items()}, dict(ref.config))
    assert back.keys() == state_dict.keys()
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)
    ours = original_to_diffusers(original, "vae", dict(ref.config))
    assert ours.keys() == state_dict.keys() and all(torch.equal(ours[k], state_dict[k]) for k in state_dict)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_load_original_checkpoint(tmp_path, suffix):
    ref = reference_vae("gray_3levels_noattn")
    original = diffusers_to_original(ref.state_dict(), "vae", dict(ref.config))
    full = {"first_stage_model." + k: v for k, v in original.items()}
    full["model.diffusion_model.out.2.bias"] = torch.zeros(4)          # other parts of an SD checkpoint are ignored
    path = tmp_path / f"sd{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": full, "global_step": 10}, path)
    else:
        safetensors.torch.save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    # config read off the shapes (norm groups must be given for this 8-group toy model)
    inferred = io.load_original(path, "vae", config={**dict(ref.config)})
    assert_same_vae_outputs(inferred, ref)


def test_save_original_then_load_original(tmp_path):
    ours = AutoencoderKL(VAEConfig(block_out_channels=(32, 64), layers_per_block=1))   # 32 groups: inferable
    io.save_original(ours, tmp_path / "vae.safetensors", "vae")
    keys = safetensors.torch.load_file(str(tmp_path / "vae.safetensors")).keys()
    assert all(k.startswith("first_stage_model.") for k in keys)
    back = io.load_original(tmp_path / "vae.safetensors", "vae")
    assert back.config.block_out_channels == (32, 64) and back.config.layers_per_block == 1
    for key, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


# ---- safety and clear failures -----------------------------------------------------------------------------------


class _Touch:
    """Unpickling this creates a file: the side effect a malicious checkpoint would have."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Touch(marker)}, path)
    with pytest.raises(ValueError, match=r"evil\.ckpt: refused to load"):
        io.read_state_dict(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)   # the control: a plain unpickler does run the payload
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match="refused"):
        io.load_original(path, "vae")
    assert not marker.exists()


def test_truncated_safetensors_names_the_file(tmp_path):
    reference_vae().save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors: not a readable safetensors file"):
        io.load_pretrained(tmp_path)


def test_missing_config_and_unknown_class_are_named(tmp_path):
    reference_vae().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "ControlNetModel"}))
    with pytest.raises(ValueError, match=r"config.json: unknown _class_name 'ControlNetModel'"):
        io.load_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.json: missing"):
        io.load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        io.load_pretrained(tmp_path / "nope")


def test_key_and_shape_mismatches_are_readable(tmp_path):
    ref = reference_vae()
    state_dict = dict(ref.state_dict())
    state_dict.pop("decoder.conv_out.bias")
    state_dict["decoder.extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()},
                                str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **dict(ref.config)}))
    with pytest.raises(ValueError, match=r"1 missing keys \['decoder.conv_out.bias'\], 1 unexpected keys"):
        io.load_pretrained(tmp_path)
    state_dict = dict(ref.state_dict())
    state_dict["decoder.conv_out.bias"] = torch.zeros(7)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()},
                                str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"decoder.conv_out.bias has shape \(7,\), the model expects \(3,\)"):
        io.load_pretrained(tmp_path)


def test_unsupported_format_and_missing_file(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights.npz: unsupported weights format '.npz'"):
        io.read_state_dict(tmp_path / "weights.npz")
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        io.read_state_dict(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="loading an original UNet needs config="):
        path = tmp_path / "unet.safetensors"
        safetensors.torch.save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, str(path))
        io.load_original(path, "unet")


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = AutoencoderKL(VAEConfig.preset("tiny"))
    model.save_pretrained(tmp_path)
    before = (tmp_path / "diffusion_pytorch_model.safetensors").read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with torch.no_grad():
        model.decoder.conv_out.bias.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]


# ---- the UNet, the VQ model and the schedulers -----------------------------------------------------------------

from diffusers import DDIMScheduler as RefDDIM  # noqa: E402
from diffusers import UNet2DConditionModel as RefUNet  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint  # noqa: E402

from ldm.ddpm import DDIMScheduler  # noqa: E402
from ldm.unet import UNet2DConditionModel  # noqa: E402
from ldm.vq import VQConfig, VQModel  # noqa: E402
from tests import test_unet  # noqa: E402


@pytest.mark.parametrize("name", ["sd1_style", "sd2_style", "class_embeddings", "two_transformer_layers"])
def test_unet_original_layout_is_what_diffusers_converts_back(name):
    _, ref = test_unet.make_pair(name)
    state_dict, config = ref.state_dict(), dict(ref.config)
    original = diffusers_to_original(state_dict, "unet", config)
    assert "input_blocks.0.0.weight" in original and not any(k.startswith("down_blocks") for k in original)
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in original.items()}, config)
    assert back.keys() == state_dict.keys()
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)
    ours = original_to_diffusers(original, "unet", config)
    assert ours.keys() == state_dict.keys() and all(torch.equal(ours[k], state_dict[k]) for k in state_dict)


@torch.no_grad()
def test_unet_folders_and_original_files_round_trip(tmp_path):
    ours, ref = test_unet.make_pair("sd1_style")
    kwargs = test_unet.inputs(ours)
    expected = ref(**kwargs).sample
    ref.save_pretrained(tmp_path / "from_diffusers", variant="fp16")
    loaded = io.load_pretrained(tmp_path / "from_diffusers", variant="fp16")
    assert isinstance(loaded, UNet2DConditionModel)
    assert torch.equal(loaded.eval()(**kwargs), expected)
    ours.save_pretrained(tmp_path / "from_ldm", max_shard_size="300KB")
    assert len(list((tmp_path / "from_ldm").glob("*.safetensors"))) > 1
    assert torch.equal(RefUNet.from_pretrained(tmp_path / "from_ldm").eval()(**kwargs).sample, expected)
    io.save_original(ours, tmp_path / "sd.safetensors", "unet")
    again = io.load_original(tmp_path / "sd.safetensors", "unet", config=ours.config)
    assert torch.equal(again.eval()(**kwargs), expected)


def test_vq_original_round_trip(tmp_path):
    model = VQModel(VQConfig.preset("tiny"))
    io.save_original(model, tmp_path / "vq.ckpt.safetensors", "vq")
    back = io.load_original(tmp_path / "vq.ckpt.safetensors", "vq", config=model.config)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_scheduler_folders_and_a_whole_pipeline(tmp_path):
    ours_unet, ref_unet = test_unet.make_pair("sd1_style")
    ref_vae = reference_vae()
    vae = io.build_model(AutoencoderKL, VAEConfig.from_diffusers(dict(ref_vae.config)), ref_vae.state_dict(), "test")
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    io.save_pipeline(tmp_path, {"vae": vae, "unet": ours_unet, "scheduler": sched}, pipeline_class="TestPipeline")
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"] and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    parts = io.load_pipeline(tmp_path)
    assert isinstance(parts["scheduler"], DDIMScheduler) and isinstance(parts["unet"], UNet2DConditionModel)
    reference = RefDDIM.from_pretrained(tmp_path, subfolder="scheduler")
    reference.set_timesteps(10)
    parts["scheduler"].set_timesteps(10)
    assert torch.equal(parts["scheduler"].timesteps, reference.timesteps)
    assert isinstance(io.load_pretrained(tmp_path / "scheduler"), DDIMScheduler)
    kwargs = test_unet.inputs(ours_unet)
    with torch.no_grad():
        assert torch.equal(RefUNet.from_pretrained(tmp_path, subfolder="unet").eval()(**kwargs).sample,
                           ours_unet.eval()(**kwargs))
    with pytest.raises(ValueError, match="scheduler_config.json: unknown _class_name 'PNDMScheduler'"):
        (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "PNDMScheduler"}))
        io.load_pretrained(tmp_path / "scheduler")


# ---- folders replaced whole, and what killed processes leave behind ---------------------------------------------


def test_replace_folder_swaps_in_a_whole_new_folder_and_an_interrupted_write_keeps_the_old_one(tmp_path):
    folder = tmp_path / "model"

    def write_version(version: int, files: tuple[str, ...]):
        def write(tmp: Path):
            tmp.mkdir()
            for name in files:
                (tmp / name).write_text(str(version))
        return write

    files.replace_folder(folder, write_version(1, ("config.json", "weights-00001-of-00002", "weights-00002-of-00002")))
    files.replace_folder(folder, write_version(2, ("config.json", "weights")))
    assert sorted(os.listdir(folder)) == ["config.json", "weights"]          # no shard of version 1 left over
    assert {(folder / n).read_text() for n in os.listdir(folder)} == {"2"}

    def interrupted(tmp: Path):
        write_version(3, ("config.json",))(tmp)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.replace_folder(folder, interrupted)
    assert sorted(os.listdir(tmp_path)) == ["model"] and (folder / "config.json").read_text() == "2"


def test_remove_stale_temps_restores_a_folder_moved_aside_and_clears_only_dead_processes_temps(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()                      # a process that has exited
    (tmp_path / f".pipeline.old-{dead}").mkdir()                         # killed between replace_folder's renames
    (tmp_path / f".pipeline.old-{dead}" / "model_index.json").write_text("{}")
    (tmp_path / f".pipeline.tmp-{dead}").mkdir()
    (tmp_path / f".checkpoint.pt.tmp-{dead}").write_bytes(b"half")
    (tmp_path / "model").mkdir()
    (tmp_path / f".model.old-{dead}").mkdir()                            # killed after the second rename
    (tmp_path / f".log.jsonl.tmp-{os.getpid()}").write_text("")          # a live process's: left alone
    done = files.remove_stale_temps(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [f".log.jsonl.tmp-{os.getpid()}", "model", "pipeline"]
    assert (tmp_path / "pipeline" / "model_index.json").read_text() == "{}"
    assert len(done) == 4 and f"restored pipeline from .pipeline.old-{dead}" in done


def test_outputs_apart_from_inputs_compares_resolved_paths(tmp_path):
    """Two spellings of one folder (a link, '..') are one path: an output through a link into an input is refused."""
    from ldm.files import check_outputs_apart
    (tmp_path / "data" / "alice").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "data", target_is_directory=True)
    with pytest.raises(ValueError, match=r"^--out \S+alias/alice/x.png lies inside --real \S+/data, which this "
                                         r"command reads: it never writes into its inputs; choose another --out$"):
        check_outputs_apart({"--out": tmp_path / "alias" / "alice" / "x.png"}, {"--real": tmp_path / "data"})
    with pytest.raises(ValueError, match=r"^--out \S+ contains --real "):
        check_outputs_apart({"--out": tmp_path / "x" / ".."}, {"--real": tmp_path / "data"})
    with pytest.raises(ValueError, match=r"^--a \S+r.json is --b \S+r.json: two outputs of one command on one path"):
        check_outputs_apart({"--a": tmp_path / "r.json", "--b": tmp_path / "alias" / ".." / "r.json"}, {})
    check_outputs_apart({"--out": tmp_path / "datafile", "--grid": tmp_path / "data_grid.png"},   # prefixes only
                        {"--real": tmp_path / "data", "--model": None})
