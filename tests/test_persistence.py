"""A trained model is a directory (config + adapters), checkpoints carry the task list, config and
backbone fingerprint, and state is matched by task name, never by position."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY_SWIN
from tests.test_model import randomize_adapters
from vtagml import VTAGML
from vtagml.engine.module import MultitaskModule
from vtagml.models.backbone import create_backbone
from vtagml.tasks import Depth, task_from_spec

TASKS = ("semseg", "depth", "normals", "edges")


def make(checkpoint, tasks=TASKS, num_classes=6, **kw):
    torch.manual_seed(0)
    return VTAGML(TINY_SWIN["name"], tasks=tasks, num_classes=num_classes, img_size=64, checkpoint_path=checkpoint,
                  backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16, **kw)


def trained(checkpoint, tasks=TASKS):
    """A model whose per-task state differs across tasks (as after training)."""
    net = make(checkpoint, tasks).eval()
    randomize_adapters(net, seed=5)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        t = len(tasks)
        a = torch.eye(t) + 0.3 * torch.rand(t, t, generator=g)
        net.troa.affinity.copy_(a.fill_diagonal_(1.0))
        net.troa.counts.fill_(3.0)
    return net


def predict(net, x):
    with torch.no_grad():
        return net.eval()(x)


def test_task_specs_round_trip():
    task = Depth(name="depth_zbuffer", weight=2.5, loss="log_l1", typical_depth=4.0)
    spec = json.loads(json.dumps(task.spec()))
    again = task_from_spec(spec)
    assert type(again) is Depth and again.spec() == task.spec() and again.weight == 2.5
    with pytest.raises(ValueError, match="not a vtagml Task"):
        task_from_spec({"class_path": "torch.nn.Linear", "init_args": {}})


def test_directory_round_trip_gives_identical_outputs(tmp_path, tiny_checkpoint):
    net = trained(tiny_checkpoint)
    net.save_adapters(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["task_names"] == list(TASKS) and saved["config"]["backbone"] == TINY_SWIN["name"]
    assert saved["config"]["embed_dim"] == 8 and len(saved["backbone_fingerprint"]) == 64
    assert "vtagml_version" in saved
    again = VTAGML.from_adapters(tmp_path / "model", checkpoint_path=tiny_checkpoint)
    x = torch.rand(2, 3, 64, 64)
    a, b = predict(net, x), predict(again, x)
    for k in TASKS:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(again.task_affinity(), net.task_affinity())


def test_from_adapters_refuses_another_backbone(tmp_path, tiny_checkpoint):
    trained(tiny_checkpoint).save_adapters(tmp_path / "model")
    torch.manual_seed(99)
    other = create_backbone(TINY_SWIN["name"], 64, **TINY_SWIN["kwargs"])  # same architecture, other weights
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="fingerprint"):
        VTAGML.from_adapters(tmp_path / "model", checkpoint_path=path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        VTAGML.from_adapters(tmp_path / "nothing")


def test_from_adapters_names_the_file_and_tensors_of_other_shapes(tmp_path, tiny_checkpoint):
    """Adapters of a model with other layer shapes (an older FPN image branch) are refused with the
    file and the tensors at fault, never loaded half."""
    from safetensors.torch import load_file

    trained(tiny_checkpoint).save_adapters(tmp_path / "model")
    weights = tmp_path / "model" / "adapters.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("refine.0.weight"))
    out, cin = state[key].shape[:2]
    state[key] = torch.zeros(out, 3 * cin, 3, 3)  # the concatenating refine conv of before 2026-12-06
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=rf"adapters\.safetensors: .*{key} \({out}, {3 * cin}, 3, 3\) "
                                         rf"\(model: \({out}, {cin}, 3, 3\)\)"):
        VTAGML.from_adapters(tmp_path / "model", checkpoint_path=tiny_checkpoint)


def test_reordered_tasks_load_by_name(tmp_path, tiny_checkpoint):
    net = trained(tiny_checkpoint)
    net.save_adapters(tmp_path / "model")
    state = {"net." + k: v for k, v in net.state_dict().items()}
    reordered = make(tiny_checkpoint, tasks=tuple(reversed(TASKS)))
    reordered.align_task_state(state, TASKS, prefix="net.")
    reordered.load_state_dict({k[4:]: v for k, v in state.items()})
    x = torch.rand(1, 3, 64, 64)
    a, b = predict(net, x), predict(reordered, x)
    for k in TASKS:  # same per-task state; sums over tasks (alpha @ E) run in another order
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=k)
    i, j = TASKS.index("depth"), TASKS.index("edges")
    r = reordered.task_names
    assert reordered.task_affinity()[r.index("depth"), r.index("edges")] == net.task_affinity()[i, j]
    with pytest.raises(ValueError, match=r"missing \['reshading'\]"):
        make(tiny_checkpoint, tasks=("semseg", "depth", "normals", "reshading")).align_task_state(
            state, TASKS, prefix="net.")


def test_lightning_checkpoint_records_model_and_loads_without_net(tmp_path, tiny_checkpoint):
    import lightning as L
    net = trained(tiny_checkpoint)
    module = MultitaskModule(net, lr=1e-3)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert ckpt["vtagml"]["task_names"] == list(TASKS)
    assert ckpt["vtagml"]["backbone_fingerprint"] == net.backbone_fingerprint()
    loaded = MultitaskModule.load_from_checkpoint(tmp_path / "m.ckpt")
    x = torch.rand(1, 3, 64, 64)
    a, b = predict(net, x), predict(loaded.net, x)
    for k in TASKS:
        assert torch.equal(a[k], b[k]), k
    # the same checkpoint into a model that lists the tasks in another order
    other = MultitaskModule.load_from_checkpoint(tmp_path / "m.ckpt", net=make(tiny_checkpoint, tasks=TASKS[::-1]))
    c = predict(other.net, x)
    for k in TASKS:
        torch.testing.assert_close(a[k], c[k], rtol=1e-4, atol=1e-4, msg=k)


def test_add_task_keeps_existing_outputs_bit_identical_and_trains_only_the_new_task(tmp_path, tiny_checkpoint):
    from vtagml.data import SyntheticScenes, collate_multitask
    from vtagml.engine.module import branch_inputs, task_losses
    net = trained(tiny_checkpoint)
    x = torch.rand(2, 3, 64, 64)
    before = predict(net, x)
    state = {k: v.clone() for k, v in net.trainable_state_dict().items()}
    task = net.add_task("depth_zbuffer")
    assert net.task_names[-1] == "depth_zbuffer" and net.config["tasks"][-1]["init_args"]["name"] == "depth_zbuffer"
    assert torch.equal(net.decoders["depth_zbuffer"].state_dict()["lateral.0.weight"],
                       net.decoder_init.state_dict()["lateral.0.weight"])  # starts at theta_0
    handle = net.train_only(task.name)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("decoders.depth_zbuffer.", "heads.depth_zbuffer.", "embeddings."))
                             for n in trainable)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    ds = SyntheticScenes(split="train", size=64, num_samples=2, tasks=["depth_zbuffer"])
    batch = collate_multitask([ds[0], ds[1]])
    net.train()
    for _ in range(2):
        enc = net.encode(batch["image"])
        preds = net.forward_branches(enc, range(5), branch_inputs(enc.z, 5))
        loss = sum(task_losses(net.tasks, preds, batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    handle.remove()
    with torch.no_grad():
        after = net.eval()(x, tasks=list(TASKS))  # the same task-batched call as before the task was added
        new = net(x, tasks=["depth_zbuffer"])["depth_zbuffer"]
    for k in TASKS:
        assert torch.equal(before[k], after[k]), k
    for k, v in state.items():
        if k.startswith("embeddings."):
            assert torch.equal(net.embeddings.weight[:4], v), k
        elif k.startswith("troa."):
            assert torch.equal(getattr(net.troa, k[5:])[:4, :4], v), k
        else:
            assert torch.equal(net.state_dict()[k], v), k
    assert not torch.equal(net.decoders["depth_zbuffer"].state_dict()["lateral.0.weight"],
                           net.decoder_init.state_dict()["lateral.0.weight"])
    assert new.shape == (2, 1, 64, 64)
    # the grown model is a directory like any other
    net.save_adapters(tmp_path / "grown")
    again = VTAGML.from_adapters(tmp_path / "grown", checkpoint_path=tiny_checkpoint)
    assert again.task_names == [*TASKS, "depth_zbuffer"]
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x, tasks=["depth_zbuffer"])["depth_zbuffer"], new, rtol=0, atol=0)


def test_zero_shot_composition_of_embeddings_decoders_and_heads(tiny_checkpoint):
    net = trained(tiny_checkpoint)
    e = net.embeddings.weight.detach().clone()
    theta0 = net.decoder_init.state_dict()["lateral.0.weight"]
    dec = {n: net.decoders[n].state_dict()["lateral.0.weight"] for n in TASKS}
    net.add_task("depth_zbuffer", composition={"depth": 3.0, "normals": 1.0})
    torch.testing.assert_close(net.embeddings.weight[-1], 0.75 * e[1] + 0.25 * e[2])
    torch.testing.assert_close(net.decoders["depth_zbuffer"].state_dict()["lateral.0.weight"],
                               theta0 + 0.75 * (dec["depth"] - theta0) + 0.25 * (dec["normals"] - theta0))
    # the head comes from the known heads of the same kind only (depth), renormalized
    assert torch.equal(net.heads["depth_zbuffer"].conv.weight, net.heads["depth"].conv.weight)
    alpha = net.conditioning_weights()
    torch.testing.assert_close(alpha[-1], torch.eye(5)[-1])  # c_n = E_n: the composition
    with pytest.raises(ValueError, match="same kind"):
        net.add_task("edges_occlusion", composition={"depth": 1.0})
    with pytest.raises(KeyError, match="reshading"):
        net.add_task("edges_occlusion", composition={"reshading": 1.0})
    with pytest.raises(ValueError, match="already has"):
        net.add_task("depth")


def test_task_weights_reach_the_tasks_and_the_saved_config(tiny_checkpoint):
    net = make(tiny_checkpoint, task_weights={"normals": 10, "edges": 50})
    assert [t.weight for t in net.tasks] == [1.0, 1.0, 10.0, 50.0]
    again = VTAGML.from_config(net.config)
    assert [t.weight for t in again.tasks] == [1.0, 1.0, 10.0, 50.0]
    with pytest.raises(ValueError, match="reshading"):
        make(tiny_checkpoint, task_weights={"reshading": 2})


def test_task_options_reach_the_tasks_and_the_saved_config(tiny_checkpoint):
    net = make(tiny_checkpoint, task_options={"depth": {"loss": "silog", "typical_depth": 2.0}})
    depth = net.tasks[net.task_names.index("depth")]
    assert (depth.loss_name, depth.typical_depth) == ("silog", 2.0)
    again = VTAGML.from_config(net.config).tasks[net.task_names.index("depth")]
    assert (again.loss_name, again.typical_depth) == ("silog", 2.0)
    with pytest.raises(ValueError, match="task_options.*reshading"):
        make(tiny_checkpoint, task_options={"reshading": {}})
    with pytest.raises(ValueError, match="loss must be one of"):
        make(tiny_checkpoint, task_options={"depth": {"loss": "l2"}})
