"""The VTAGML model: identity at init, frozen trunk, TAA layout, branches, shapes, checkpoints."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from tests.conftest import DEVICE, TINY_SWIN, TINY_SWINV2
from vtagml import VTAGML
from vtagml.models.backbone import create_backbone


def make_model(checkpoint, cfg=TINY_SWIN, tasks=("semseg", "depth", "normals", "edges"), **kw):
    kw.setdefault("embed_dim", 8)
    kw.setdefault("decoder_channels", 16)
    return VTAGML(cfg["name"], tasks=tasks, num_classes=5, img_size=64, checkpoint_path=checkpoint,
                  backbone_kwargs=cfg["kwargs"], adapt_last_k=2, **kw).to(DEVICE)


def randomize_adapters(model, seed=0):
    """Give every zero-initialized adapter parameter a non-zero value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith(("decoders", "heads")):
                p.add_(torch.randn(p.shape, generator=g).to(p) * 0.1)


def reference_features(cfg, checkpoint, x):
    ref = timm.create_model(cfg["name"], features_only=True, pretrained=True, img_size=64, strict_img_size=False,
                            pretrained_cfg_overlay=dict(file=str(checkpoint)), **cfg["kwargs"]).to(DEVICE).eval()
    with torch.no_grad():
        return ref(x)


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_identity_at_init_matches_timm_features(tiny_checkpoint, size):
    model = make_model(tiny_checkpoint).eval()
    x = torch.rand(2, 3, *size, device=DEVICE)
    normalized = (x - model.mean) / model.std
    expected = reference_features(TINY_SWIN, tiny_checkpoint, normalized)
    for task in model.task_names:
        got = model.forward_features(x, task)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape  # NHWC, as timm's features_only Swin
            assert (g - e).abs().max().item() < 1e-5


def test_swin_v2_identity_and_forward(tiny_v2_checkpoint):
    model = make_model(tiny_v2_checkpoint, cfg=TINY_SWINV2).eval()
    assert model.adapters[0].post_norm
    x = torch.rand(1, 3, 64, 96, device=DEVICE)
    expected = reference_features(TINY_SWINV2, tiny_v2_checkpoint, (x - model.mean) / model.std)
    for g, e in zip(model.forward_features(x, "depth"), expected):
        assert (g - e).abs().max().item() < 1e-5
    out = model(x)
    assert out["normals"].shape == (1, 3, 64, 96)


def test_one_step_keeps_frozen_weights_and_moves_trainable(tiny_checkpoint):
    """Frozen weights stay bit-identical and get no gradient. Zero-initialized layers make
    some gradients exactly zero at the first step (Down behind a zero Up, FiLM gammas times a
    zero A, embeddings behind zero FiLM/TSN weights), so "every trainable parameter moved" is
    checked after a second step."""
    model = make_model(tiny_checkpoint)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    x = torch.rand(2, 3, 64, 64, device=DEVICE)
    torch.manual_seed(0)  # random per-pixel weights: no output's loss is constant (|unit normal|² is)
    weights = {k: torch.randn(v.shape, device=DEVICE) for k, v in model(x).items()}
    for step in range(2):
        opt.zero_grad()
        out = model(x)
        loss = sum((v.float() * weights[k]).mean() for k, v in out.items())
        loss.backward()
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, f"gradient reached frozen {n}"
        opt.step()
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    moved = {n: not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if p.requires_grad}
    assert all(moved.values()), [n for n, m in moved.items() if not m]


def test_taa_bias_is_block_diagonal_and_shared_across_heads_and_windows(tiny_checkpoint):
    model = make_model(tiny_checkpoint).eval()
    layer = model.adapters[0]  # first adapted block of stage 3: 2x2 windows, not shifted
    blk = layer.block
    assert blk.shift_size == (0, 0) and blk.window_size == (2, 2)
    torch.manual_seed(0)
    with torch.no_grad():
        layer.taa.pattern.copy_(torch.randn_like(layer.taa.pattern))
        layer.taa.film.weight.copy_(torch.randn_like(layer.taa.film.weight))
        layer.taa.film.bias.copy_(torch.randn_like(layer.taa.film.bias))
    cond = torch.randn(2, model.embed_dim, device=DEVICE)
    bias = layer.taa(cond)  # (2, 4, 4)
    gamma, beta = layer.taa.film(cond).chunk(2, -1)
    a_tilde = (1 + gamma[:, None]) * layer.taa.pattern + beta[:, None]
    expected = torch.zeros(2, 4, 4, device=DEVICE)
    expected[:, :2, :2] = a_tilde[:, :2]
    expected[:, 2:, 2:] = a_tilde[:, 2:]
    torch.testing.assert_close(bias, expected)

    # the attention with the bias equals a hand-written window attention with it added to logits
    x = torch.randn(2, 4, 6, blk.attn.qkv.in_features, device=DEVICE)  # 2x3 windows of 2x2
    with torch.no_grad():
        got = layer._attention(x, bias)
        attn = blk.attn
        heads = attn.num_heads
        win = x.view(2, 2, 2, 3, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(2, 6, 4, -1)  # (B, nW, N, C)
        q, k, v = attn.qkv(win).view(2, 6, 4, 3, heads, -1).permute(3, 0, 1, 4, 2, 5)  # (B, nW, h, N, d)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + attn._get_rel_pos_bias()[0]
        logits = logits + bias[:, None, None]  # same for every window and head of a sample
        out = attn.proj((logits.softmax(-1) @ v).transpose(2, 3).reshape(2, 6, 4, -1))
        out = out.view(2, 2, 3, 2, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape_as(got)
    torch.testing.assert_close(got, out, atol=1e-5, rtol=1e-5)


def test_identical_embeddings_give_identical_branches(tiny_checkpoint):
    model = make_model(tiny_checkpoint, tasks=("depth", "depth_zbuffer", "normals")).eval()
    randomize_adapters(model)
    with torch.no_grad():
        model.embeddings.weight[1].copy_(model.embeddings.weight[0])
    x = torch.rand(1, 3, 64, 64, device=DEVICE)
    a, b = model.forward_features(x, "depth"), model.forward_features(x, "depth_zbuffer")
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with torch.no_grad():
        model.troa.affinity.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.9, 0.2]]))
    c = model.forward_features(x, "depth_zbuffer")  # now mixes in the normals embedding
    assert not torch.allclose(b[-1], c[-1])
    # heads of the two identical-input branches share decoder init, so only heads differ
    assert torch.equal(model.decoders["depth"].lateral[0].weight, model.decoders["depth_zbuffer"].lateral[0].weight)


def test_plain_adapter_is_not_task_conditioned(tiny_checkpoint):
    """Without TAA and TSN (the `adapter` baseline) nothing trainable reads the task embedding, and
    every task gets the same adapted features, even with non-zero (frozen) TSN deltas."""
    model = make_model(tiny_checkpoint, use_taa=False, use_tsn=False).eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".bottleneck.down." in n for n in trainable)
    assert not [n for n in trainable if ".delta_" in n or ".taa." in n or n.startswith("embeddings.")]
    x = torch.rand(1, 3, 64, 64, device=DEVICE)
    fresh = model.forward_features(x, "depth")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("adapters.") and (".bottleneck." in n or ".delta_" in n):
                p.add_(torch.randn(p.shape, generator=g).to(p))
    feats = [model.forward_features(x, t) for t in model.task_names]
    assert not torch.allclose(feats[0][-1], fresh[-1])  # the bottleneck adapts the features
    assert all(torch.equal(a, b) for f in feats[1:] for a, b in zip(feats[0], f))


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_heads_shapes_and_ranges(tiny_checkpoint, size):
    model = make_model(tiny_checkpoint).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size, device=DEVICE))
    h, w = size
    assert out["semseg"].shape == (2, 5, h, w)
    assert out["depth"].shape == (2, 1, h, w) and out["depth"].min() > 0
    assert out["normals"].shape == (2, 3, h, w)
    torch.testing.assert_close(out["normals"].norm(dim=1), torch.ones(2, h, w, device=DEVICE), atol=1e-4, rtol=0)
    assert out["edges"].shape == (2, 1, h, w)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert list(model(torch.rand(1, 3, 64, 64, device=DEVICE), tasks=["edges"])) == ["edges"]
    with pytest.raises(KeyError, match="reshading"):
        model(torch.rand(1, 3, 64, 64, device=DEVICE), tasks=["reshading"])


def test_trunk_runs_once_per_forward(tiny_checkpoint):
    model = make_model(tiny_checkpoint)
    calls = []
    model.trunk["patch_embed"].register_forward_hook(lambda *a: calls.append(1))
    model.trunk["head"].register_forward_hook(lambda *a: calls.append(2))
    model(torch.rand(3, 3, 64, 64, device=DEVICE))
    assert calls == [1, 2]


@pytest.mark.parametrize("options", [dict(decoder="swin_unet"), dict(shared_decoder=True),
                                     dict(use_taa=False, use_tsn=False, use_bottleneck=False),
                                     dict(train_adapted_blocks=True, adapt_last_k=0)])
def test_variants_run(tiny_checkpoint, options):
    kw = dict(options)
    k = kw.pop("adapt_last_k", 2)
    model = VTAGML(TINY_SWIN["name"], tasks=("semseg", "edges"), num_classes=5, img_size=64,
                   checkpoint_path=tiny_checkpoint, backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=k,
                   embed_dim=8, decoder_channels=16, **kw)
    out = model(torch.rand(2, 3, 64, 96))
    assert out["semseg"].shape == (2, 5, 64, 96) and out["edges"].shape == (2, 1, 64, 96)
    out["semseg"].mean().backward()
    report = model.parameter_report()
    assert report["total"]["trainable"] + report["total"]["frozen"] == sum(p.numel() for p in model.parameters())
    if options.get("train_adapted_blocks"):
        assert report["adapted_blocks"]["trainable"] > 0 and report["trunk"]["trainable"] == 0


def test_parameter_report_and_trainable_state_roundtrip(tiny_checkpoint):
    model = make_model(tiny_checkpoint)
    report = model.parameter_report()
    assert report["trunk"]["trainable"] == 0 and report["adapted_blocks"]["trainable"] == 0
    assert report["taa"]["trainable"] > 0 and report["tsn"]["trainable"] > 0
    assert 0 < report["trainable_fraction"] < 1
    randomize_adapters(model, seed=3)
    with torch.no_grad():
        model.troa.affinity.copy_(torch.tensor([[1.0, 0.2, 0, 0], [0.1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.3, 1]]))
    state = model.trainable_state_dict()
    assert all(not k.startswith("trunk.") for k in state)
    fresh = make_model(tiny_checkpoint)
    fresh.load_trainable_state_dict(state)
    x = torch.rand(1, 3, 64, 64, device=DEVICE)
    model.eval(), fresh.eval()
    with torch.no_grad():
        a, b = model(x), fresh(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = dict(state)
    bad.pop("embeddings.weight")
    bad["adapters.99.taa.pattern"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"embeddings\.weight.*adapters\.99"):
        fresh.load_trainable_state_dict(bad)


def test_checkpoint_errors_name_the_keys(tmp_path, tiny_checkpoint):
    from safetensors.torch import load_file, save_file
    state = load_file(str(tiny_checkpoint))
    state.pop("layers.2.blocks.0.attn.qkv.weight")
    state["layers.9.extra"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"layers\.2\.blocks\.0\.attn\.qkv\.weight.*layers\.9\.extra"):
        create_backbone(TINY_SWIN["name"], 64, checkpoint_path=path, **TINY_SWIN["kwargs"])
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_backbone(TINY_SWIN["name"], 64, checkpoint_path=tmp_path / "nowhere.pth", **TINY_SWIN["kwargs"])
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        create_backbone(TINY_SWIN["name"], 64, checkpoint_path=junk, **TINY_SWIN["kwargs"])
    with pytest.raises(ValueError, match="Swin"):
        create_backbone("resnet18")
    other_arch = dict(TINY_SWIN["kwargs"], embed_dim=24)
    with pytest.raises(ValueError, match="tiny_swin.safetensors.*does not match"):
        create_backbone(TINY_SWIN["name"], 64, checkpoint_path=tiny_checkpoint, **other_arch)


def test_frozen_parts_stay_in_eval_mode(tiny_checkpoint):
    model = make_model(tiny_checkpoint).train()
    assert not model.trunk.training and not model.adapters[0].block.training
    assert model.adapters[0].taa.training and model.decoders["depth"].training
    x = torch.rand(1, 3, 64, 64, device=DEVICE)
    enc1, enc2 = model.encode(x), model.encode(x)
    assert torch.equal(enc1.z, enc2.z) and not enc1.z.requires_grad


def test_image_stride_per_task(tiny_checkpoint):
    """Edges at full resolution, the rest at stride 2: same weights (theta_0), different stride; a
    task added later sees as finely as the known tasks of its kind; the config rebuilds it."""
    model = VTAGML(TINY_SWIN["name"], tasks=("semseg", "edges"), num_classes=5, img_size=64,
                   checkpoint_path=tiny_checkpoint, backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2,
                   embed_dim=8, decoder_channels=16, image_skip_stride={"edges": 1})
    assert {t: d.out_stride for t, d in model.decoders.items()} == {"semseg": 2, "edges": 1}
    init, edges = model.decoder_init.state_dict(), model.decoders["edges"].state_dict()
    assert init.keys() == edges.keys() and all(torch.equal(init[k], edges[k]) for k in init)
    out = model(torch.rand(1, 3, 64, 96))
    assert out["edges"].shape == (1, 1, 64, 96)
    model.add_task("edges_occlusion", composition={"edges": 1.0})
    assert model.decoders["edges_occlusion"].out_stride == 1
    rebuilt = VTAGML.from_config(model.config)
    assert {t: d.out_stride for t, d in rebuilt.decoders.items()} == {"semseg": 2, "edges": 1, "edges_occlusion": 1}
    with pytest.raises(ValueError, match="per-task FPN decoders"):
        VTAGML(TINY_SWIN["name"], tasks=("edges",), img_size=64, checkpoint_path=tiny_checkpoint,
               backbone_kwargs=TINY_SWIN["kwargs"], embed_dim=8, shared_decoder=True, image_skip_stride={"edges": 1})
    with pytest.raises(ValueError, match="edge'"):
        VTAGML(TINY_SWIN["name"], tasks=("semseg",), num_classes=5, img_size=64, checkpoint_path=tiny_checkpoint,
               backbone_kwargs=TINY_SWIN["kwargs"], embed_dim=8, image_skip_stride={"edge": 1})


def test_image_branch_removed_per_task(tiny_checkpoint, tmp_path):
    """image_skip_stride {task: 0}: that task's decoder has no image branch (pyramid output at
    stride 4, all its channels into the head); tasks of its kind inherit it, other tasks composed
    from it keep theta_0 where it has no tensor; the saved model reloads with the same outputs."""
    model = VTAGML(TINY_SWIN["name"], tasks=("depth", "edges"), img_size=64, checkpoint_path=tiny_checkpoint,
                   backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16,
                   image_skip_stride={"depth": 0})
    depth, edges = model.decoders["depth"], model.decoders["edges"]
    assert (depth.out_stride, depth.out_channels, edges.out_stride, edges.out_channels) == (4, 16, 2, 8)
    assert not any(k.startswith(("stem", "refine", "reduce")) for k in depth.state_dict())
    assert model.heads["depth"].conv.in_channels == 16 and model.heads["edges"].conv.in_channels == 8
    with pytest.raises(ValueError, match="not added"):
        depth.set_image_stride(1)
    model.add_task("depth_zbuffer", composition={"depth": 1.0})
    assert model.decoders["depth_zbuffer"].out_stride == 4
    with torch.no_grad():
        for p in model.decoders["edges"].parameters():
            p.add_(0.1)
    model.add_task("edges_occlusion", composition={"depth": 0.5, "edges": 0.5})
    occl, init = model.decoders["edges_occlusion"].state_dict(), model.decoder_init.state_dict()
    torch.testing.assert_close(occl["stem.0.0.weight"], init["stem.0.0.weight"] + 0.05)  # depth has no stem
    torch.testing.assert_close(occl["lateral.0.weight"], init["lateral.0.weight"] + 0.05)
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    out = model(x)
    assert out["depth"].shape == (2, 1, 64, 64) and out["edges_occlusion"].shape == (2, 1, 64, 64)
    model.save_adapters(tmp_path / "m")
    again = VTAGML.from_adapters(tmp_path / "m", checkpoint_path=tiny_checkpoint).eval()
    for task, pred in again(x).items():
        torch.testing.assert_close(pred, out[task], msg=task)



def test_add_task_builds_the_decoder_its_kind_needs(tiny_checkpoint):
    """A new task gets the image branch its kind (or the constructor's default) asks for, even when
    no known decoder has one; a head that cannot be composed is refused before anything changes."""
    from vtagml.tasks import Depth

    model = VTAGML(TINY_SWIN["name"], tasks=("depth", "edges"), img_size=64, checkpoint_path=tiny_checkpoint,
                   backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16,
                   image_skip_stride={"depth": 0, "edges": 0})
    model.add_task("normals")  # no kind known: the default stride 2, with an image branch
    normals, init = model.decoders["normals"], model.decoder_init.state_dict()
    assert (normals.out_stride, normals.out_channels) == (2, 8) and model.heads["normals"].conv.in_channels == 8
    assert normals.state_dict().keys() == init.keys() and all(torch.equal(v, init[k]) for k, v in normals.state_dict().items())
    assert model(torch.rand(1, 3, 64, 64))["normals"].shape == (1, 3, 64, 64)
    assert VTAGML.from_config(model.config).decoders["normals"].out_stride == 2

    mixed = VTAGML(TINY_SWIN["name"], tasks=("depth", Depth(name="depth_zbuffer")), img_size=64,
                   checkpoint_path=tiny_checkpoint, backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8,
                   decoder_channels=16, image_skip_stride={"depth": 0})
    rows = mixed.embeddings.weight.detach().clone()
    with pytest.raises(ValueError, match="depth_far.*16 decoder channels.*depth_zbuffer"):
        mixed.add_task(Depth(name="depth_far"), composition={"depth": 0.5, "depth_zbuffer": 0.5})
    assert mixed.task_names == ["depth", "depth_zbuffer"] and torch.equal(mixed.embeddings.weight, rows)
    assert set(mixed.decoders) == {"depth", "depth_zbuffer"} and mixed.troa.affinity.shape == (2, 2)
    mixed.add_task(Depth(name="depth_far"), composition={"depth": 1.0})  # heads of one shape compose
    assert mixed.heads["depth_far"].conv.in_channels == 16

def test_pixel_shuffle_head_puts_each_output_at_its_pixel():
    """Output (c, 2i + a, 2j + b) is the 1x1 conv's channel 4c + 2a + b at (i, j)."""
    from vtagml.models.decoders import TaskHead

    torch.manual_seed(0)
    head = TaskHead(6, 2, scale=2, upsample="pixel_shuffle")
    x = torch.randn(1, 6, 3, 5)
    raw = head.conv(x)
    out = head(x, (6, 10))
    assert out.shape == (1, 2, 6, 10) and raw.shape == (1, 8, 3, 5)
    for c, a, b, i, j in [(0, 0, 0, 0, 0), (1, 1, 0, 2, 3), (0, 1, 1, 1, 4), (1, 0, 1, 2, 0)]:
        assert out[0, c, 2 * i + a, 2 * j + b] == raw[0, 4 * c + 2 * a + b, i, j]
    assert TaskHead(6, 2, scale=2).conv.out_channels == 2  # bilinear: one value per position
    with pytest.raises(ValueError, match="nearest"):
        TaskHead(6, 2, scale=2, upsample="nearest")


def test_head_upsample_per_task(tiny_checkpoint):
    """Pixel-shuffle edges beside bilinear semseg; a task added later, renamed or rebuilt from the
    config keeps its kind's head; unknown tasks or modes are refused by name."""
    model = VTAGML(TINY_SWIN["name"], tasks=("semseg", "edges"), num_classes=5, img_size=64,
                   checkpoint_path=tiny_checkpoint, backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2,
                   embed_dim=8, decoder_channels=16, head_upsample={"edges": "pixel_shuffle"})
    assert {t: (h.upsample, h.scale) for t, h in model.heads.items()} == {"semseg": ("bilinear", 1),
                                                                         "edges": ("pixel_shuffle", 2)}
    out = model(torch.rand(2, 3, 62, 90))  # padded to the window grid, cropped back
    assert out["edges"].shape == (2, 1, 62, 90) and out["semseg"].shape == (2, 5, 62, 90)
    model.add_task("edges_occlusion", composition={"edges": 1.0})
    assert model.heads["edges_occlusion"].scale == 2
    assert torch.equal(model.heads["edges_occlusion"].conv.weight, model.heads["edges"].conv.weight)
    from vtagml.tasks import Edges
    model.replace_task("edges", Edges(name="boundaries"))
    assert model.config["head_upsample"] == {"boundaries": "pixel_shuffle", "edges_occlusion": "pixel_shuffle"}
    rebuilt = VTAGML.from_config(model.config)
    assert {t: h.scale for t, h in rebuilt.heads.items()} == {"semseg": 1, "boundaries": 2, "edges_occlusion": 2}
    kw = dict(tasks=("semseg",), num_classes=5, img_size=64, checkpoint_path=tiny_checkpoint,
              backbone_kwargs=TINY_SWIN["kwargs"], embed_dim=8)
    with pytest.raises(ValueError, match="edge'"):
        VTAGML(TINY_SWIN["name"], head_upsample={"edge": "pixel_shuffle"}, **kw)
    with pytest.raises(ValueError, match="nearest"):
        VTAGML(TINY_SWIN["name"], head_upsample="nearest", **kw)


def test_decoder_group_norm_normalizes_cpu_bf16_in_float32():
    """The decoders' GroupNorm returns bf16 for bf16 input (autocast's contract) but computes it
    in float32 on CPU, where the bf16 channels-last kernel is slow: equal to the float32 result
    rounded once."""
    from vtagml.models.decoders import GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(4, 16)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5), torch.nn.init.uniform_(norm.bias, -0.5, 0.5)
    x = (3 * torch.randn(2, 16, 8, 8) + 1).bfloat16().to(memory_format=torch.channels_last)
    y = norm(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, F.group_norm(x.float(), 4, norm.weight, norm.bias, norm.eps).bfloat16())
    assert torch.equal(norm(x.float()), F.group_norm(x.float(), 4, norm.weight, norm.bias, norm.eps))
