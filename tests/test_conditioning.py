"""The user-ID embedder, its routes into the UNet, why it has several tokens, and guidance with the null ID."""
import dataclasses

import pytest
import torch

from ldm import io
from ldm.conditioning import ConditionedUNet, UserIDEmbedder, check_compatible
from ldm.unet import UNet2DConditionModel, UNetConfig

USERS = {"alice": 0, "bob": 1, "carol": 2}


def tiny_unet(route: str, users: int = 3) -> UNet2DConditionModel:
    torch.manual_seed(0)
    config = dataclasses.replace(UNetConfig.preset("tiny"), in_channels=4, out_channels=4, sample_size=8,
                                 num_class_embeds=None if route == "cross" else users + 1)
    return UNet2DConditionModel(config)


def denoiser(route: str, num_tokens: int = 4) -> ConditionedUNet:
    torch.manual_seed(1)
    return ConditionedUNet(tiny_unet(route), UserIDEmbedder(3, 32, num_tokens, route, USERS)).eval()


def test_embedder_gives_tokens_of_the_context_width_and_a_null_row():
    embedder = UserIDEmbedder(3, dim=768, num_tokens=4)
    tokens = embedder(torch.tensor([0, 2, 3]))
    assert tokens.shape == (3, 4, 768)
    assert embedder.null_id == 3
    assert torch.equal(tokens[2], embedder.embedding[3])
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        embedder(torch.tensor([4]))


def test_drop_ids_replaces_the_requested_fraction_by_the_null_id():
    embedder = UserIDEmbedder(3, dim=8)
    ids = torch.zeros(4000, dtype=torch.long)
    assert torch.equal(embedder.drop_ids(ids, 0.0, torch.Generator().manual_seed(0)), ids)
    dropped = embedder.drop_ids(ids, 0.25, torch.Generator().manual_seed(0))
    assert set(dropped.tolist()) == {0, 3}
    assert abs((dropped == 3).float().mean().item() - 0.25) < 0.03     # binomial std 0.007
    # one generator per image: image i's decision comes from its own generator, whatever the batch around it
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(6)]   # noqa: E731
    together = embedder.drop_ids(ids, 0.5, gens())
    apart = torch.cat([embedder.drop_ids(ids[i:i + 1], 0.5, gens()[i:i + 1]) for i in range(6)])
    assert torch.equal(together, apart) and 0 < (together == 3).sum() < 6
    with pytest.raises(ValueError, match="2 generators for 6 IDs"):
        embedder.drop_ids(ids, 0.5, gens()[:2])


def test_save_and_load_through_the_pipeline_registry(tmp_path):
    embedder = UserIDEmbedder(3, dim=16, num_tokens=2, route="cross", class_to_idx=USERS)
    io.save_pipeline(tmp_path / "p", {"embedder": embedder}, pipeline_class="TestPipeline")
    loaded = io.load_pipeline(tmp_path / "p")["embedder"]
    assert isinstance(loaded, UserIDEmbedder)
    assert loaded.class_to_idx == USERS and loaded.route == "cross" and loaded.num_tokens == 2
    assert torch.equal(loaded.embedding, embedder.embedding)
    UserIDEmbedder(3, dim=8).save_pretrained(tmp_path / "other")
    (tmp_path / "p" / "embedder" / "model.safetensors").replace(tmp_path / "p" / "embedder" / "x")
    (tmp_path / "other" / "model.safetensors").replace(tmp_path / "p" / "embedder" / "model.safetensors")
    with pytest.raises(ValueError, match="shape"):
        UserIDEmbedder.from_pretrained(tmp_path / "p" / "embedder")


@pytest.mark.parametrize("num_tokens, query_key_learn", [(1, False), (4, True)])
def test_one_context_token_gives_cross_attention_no_query_key_gradient(num_tokens, query_key_learn):
    """softmax over S = 1 key is identically 1, so to_q / to_k of every cross-attention get zero gradient."""
    model = denoiser("cross", num_tokens)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    model(x, t, torch.tensor([0, 1])).square().sum().backward()
    grads = [p.grad.abs().max().item() for name, p in model.unet.named_parameters()
             if "attn2.to_q" in name or "attn2.to_k" in name]
    assert grads
    assert (max(grads) > 1e-6) == query_key_learn, grads


def test_routes_feed_the_ids_where_they_say():
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 10])
    for route in ("cross", "class", "both"):
        model = denoiser(route)
        a, b = model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([1, 1]))
        assert not torch.allclose(a, b), route                          # every route makes the user matter
    # the class route alone: the cross-attention context is the null ID's, whatever the user
    model = denoiser("class")
    seen = []
    model.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"]),
                                         with_kwargs=True)
    model(x, t, torch.tensor([0, 1]))
    assert torch.equal(seen[0][0], model.embedder.embedding[3]) and torch.equal(seen[0][1], model.embedder.embedding[3])


def test_check_compatible_names_the_mismatch():
    with pytest.raises(ValueError, match="num_class_embeds = 4"):
        check_compatible(tiny_unet("cross").config, UserIDEmbedder(3, 32, route="both"))
    with pytest.raises(ValueError, match="width 32"):
        check_compatible(tiny_unet("both").config, UserIDEmbedder(3, 768, route="both"))
