"""Trunk cache: frozen-trunk outputs reused for images seen before, matched by content."""

import lightning as L
import pytest
import torch

from tests.test_engine import LossRecorder, tiny_data, tiny_module, trainer
from vtagml.engine.trunk_cache import TrunkCache, image_keys


def test_cached_outputs_are_the_trunks_and_new_images_miss(tiny_checkpoint):
    net = tiny_module(tiny_checkpoint).net.eval()
    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64)
    cache = TrunkCache(max_bytes=2**20)
    first = cache.encode(net, images, image_keys(images))
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)
    again = cache.encode(net, images[[2, 0]], image_keys(images[[2, 0]]))  # any order, any batch
    assert (cache.hits, cache.misses) == (2, 3)
    fresh = net.encode(images[[2, 0]])
    for got, want in zip([again.z, *again.skips, again.image], [fresh.z, *fresh.skips, fresh.image]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(again.z, first.z[[2, 0]])
    changed = images.clone()
    changed[1, 0, 0, 0] += 1 / 255  # one pixel: another image
    assert image_keys(changed)[1] != image_keys(images)[1] and image_keys(changed)[0] == image_keys(images)[0]
    merged = cache.encode(net, changed, image_keys(changed))  # two cached, one new: the trunk sees one image
    assert (cache.hits, cache.misses, len(cache)) == (4, 4, 4)
    fresh = net.encode(changed)
    for got, want in zip([merged.z, *merged.skips, merged.image], [fresh.z, *fresh.skips, fresh.image]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    cache.clear()
    assert (cache.hits, cache.misses, len(cache), cache.bytes) == (0, 0, 0, 0)


def test_full_cache_keeps_what_fits(tiny_checkpoint):
    net = tiny_module(tiny_checkpoint).net.eval()
    images = torch.rand(4, 3, 64, 64)
    enc = net.encode(images)
    per_image = sum(t[0].numel() * t.element_size() for t in [enc.z, *enc.skips])
    cache = TrunkCache(max_bytes=2 * per_image + 1)
    cache.encode(net, images, image_keys(images))
    assert len(cache) == 2 and cache.bytes == 2 * per_image
    with pytest.raises(ValueError, match="max_bytes"):
        TrunkCache(0)
    with pytest.raises(ValueError, match="host"):
        image_keys(torch.rand(1, 3, 8, 8, device="meta"))
    half = torch.rand(2, 3, 8, 8).bfloat16()  # keys of any dtype; the dtype is part of the key
    assert image_keys(half) == image_keys(half.clone()) and image_keys(half)[0] != image_keys(half.float())[0]


def test_training_with_the_cache_is_training_without_it(tmp_path, tiny_checkpoint):
    """Three epochs on the same scenes, validated every epoch, with TROA's exact lookahead at every
    step: identical losses, validation metrics, affinities and weights; later epochs skip the trunk."""
    runs = {}
    for gb in (0.0, 0.01):
        L.seed_everything(0)
        losses = LossRecorder()
        module = tiny_module(tiny_checkpoint, trunk_cache_gb=gb, troa_exact_every=1)
        fit = trainer(tmp_path / str(gb), max_epochs=3, callbacks=[losses], enable_checkpointing=False)
        fit.fit(module, tiny_data())
        runs[gb] = (losses.losses, module, {k: v.item() for k, v in fit.callback_metrics.items() if k.startswith("val/")})
    (plain, plain_module, plain_val), (cached, cached_module, cached_val) = runs[0.0], runs[0.01]
    assert plain_module.trunk_cache is None
    cache = cached_module.trunk_cache
    assert (cache.misses, cache.hits, len(cache)) == (8 + 4, 16 + 8, 8 + 4)  # 8 train + 4 val scenes, 3 epochs
    assert cached == pytest.approx(plain, rel=1e-5)
    assert len(plain_val) > 4 and cached_val == pytest.approx(plain_val, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(cached_module.net.troa.affinity, plain_module.net.troa.affinity, rtol=1e-4, atol=1e-5)
    assert torch.all(plain_module.net.troa.counts == 6)  # every step measured the exact lookahead
    for (name, a), b in zip(plain_module.net.trainable_state_dict().items(),
                            cached_module.net.trainable_state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_a_trained_trunk_refuses_the_cache(tiny_checkpoint):
    from tests.conftest import TINY_SWIN
    from vtagml import VTAGML
    from vtagml.engine.module import MultitaskModule
    net = VTAGML(TINY_SWIN["name"], tasks=("depth",), img_size=64, checkpoint_path=tiny_checkpoint,
                 backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16,
                 train_trunk=True, train_adapted_blocks=True)
    with pytest.raises(ValueError, match="frozen trunk"):
        MultitaskModule(net, trunk_cache_gb=1.0)
    with pytest.raises(ValueError, match="trunk_cache_gb"):
        MultitaskModule(tiny_module(tiny_checkpoint).net, trunk_cache_gb=-1)


def test_loading_a_checkpoint_clears_the_cache(tmp_path, tiny_checkpoint):
    """A checkpoint's trunk may differ from the one whose outputs the cache holds."""
    module = tiny_module(tiny_checkpoint, trunk_cache_gb=0.01)
    images = torch.rand(2, 3, 64, 64)
    module.trunk_cache.encode(module.net.eval(), images, image_keys(images))
    assert len(module.trunk_cache) == 2
    module.on_load_checkpoint({"vtagml": module.net.describe(), "state_dict": {}})
    assert len(module.trunk_cache) == 0


def test_entries_are_kept_per_precision(tiny_checkpoint):
    """Outputs encoded under bf16 autocast are not served to an fp32 pass (a bf16 fit, then an fp32 test)."""
    net = tiny_module(tiny_checkpoint).net.eval()
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    keys = image_keys(images)
    cache = TrunkCache(max_bytes=2**22)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cache.encode(net, images, keys)
    full = cache.encode(net, images, keys)
    assert (cache.hits, cache.misses, len(cache)) == (0, 4, 4)
    torch.testing.assert_close(full.z, net.encode(images).z, rtol=0, atol=1e-6)
    assert not torch.allclose(low.z.float(), full.z, rtol=0, atol=1e-4)  # the bf16 entries differ
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = cache.encode(net, images, keys)
    assert cache.hits == 2 and torch.equal(again.z, low.z)
