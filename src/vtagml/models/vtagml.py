"""The VTAGML model: one frozen timm Swin trunk, run once per image, and per-task branches.

::

    image -> normalize, pad to the backbone stride
          -> trunk (no autograd): patch embed, early stages (skip features), stage S-1 minus k blocks
          -> z (B, h, w, C)  the shared encoded embedding, read by TROA
          -> branches, batched over tasks as (T*B, h, w, C):
               adapter layers (last k blocks of stage S-1, all of stage S) conditioned on c_t
               -> decoder_t (trunk skip features + adapted stages) -> head_t -> crop
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from torch import Tensor, nn

from vtagml.affinity import TaskAffinity
from vtagml.layers import TaskEmbeddings
from vtagml.models.adapter_layer import AdapterLayer
from vtagml.models.backbone import create_backbone, split_swin
from vtagml.models.decoders import DECODERS, HEAD_UPSAMPLING, FPNDecoder, TaskHead
from vtagml.tasks import Task, build_tasks, task_from_spec

#: Files of a saved model directory (:meth:`VTAGML.save_adapters`).
CONFIG_FILE, WEIGHTS_FILE = "config.json", "adapters.safetensors"


@dataclass
class Encoded:
    """Trunk output for a batch (all NHWC, no autograd history).

    Attributes:
        z: (B, h, w, C) the shared encoded embedding.
        skips: early-stage features, finest first.
        image: (B, 3, Hp, Wp) normalized, padded image (decoders' image branch).
        size: (H, W) of the input before padding.
    """

    z: Tensor
    skips: list[Tensor]
    image: Tensor
    size: tuple[int, int]


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are buffers (state, never trained or counted as parameters)."""
    module = copy.deepcopy(module)
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                del m._parameters[name]
                m.register_buffer(name, p.detach().clone())
    return module


def _composition_weights(weights: dict[str, float], known: Sequence[str]) -> dict[str, float]:
    """Non-negative weights over known task names, L1-normalized (a clear error otherwise)."""
    unknown = [n for n in weights if n not in known]
    if unknown:
        raise KeyError(f"composition names unknown task(s) {unknown}; the model knows {list(known)}")
    if any(a < 0 for a in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"composition weights must be >= 0 with a positive sum, got {weights}")
    total = float(sum(weights.values()))
    return {n: float(a) / total for n, a in weights.items() if a > 0}


@torch.no_grad()
def _compose_into(target: nn.Module, init: nn.Module, sources: Sequence[nn.Module], weights: Sequence[float]) -> None:
    """Task-vector composition: ``target = init + sum_j w_j (source_j - init)``, tensor by tensor (a
    source without one of the target's tensors, such as a decoder without image branch, adds no change to it)."""
    base = init.state_dict()
    parts = [s.state_dict() for s in sources]
    for name, tensor in target.state_dict().items():
        if not tensor.is_floating_point():
            continue
        tensor.copy_(base[name] + sum(w * (p[name] - base[name]) for w, p in zip(weights, parts) if name in p))


def _read_saved(directory: str | os.PathLike) -> dict:
    """``config.json`` of a saved model directory (checking that its tensors are there too)."""
    directory = Path(directory)
    for path in (directory / CONFIG_FILE, directory / WEIGHTS_FILE):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a directory written by VTAGML.save_adapters")
    return json.loads((directory / CONFIG_FILE).read_text())


def _backbone_source(checkpoint_path: str | os.PathLike | None, pretrained: bool | None) -> dict:
    """Constructor overrides for where the frozen backbone comes from (none: as saved). ``pretrained``
    False counts as not given: some jsonargparse releases pass False for an unset ``bool | None``."""
    if checkpoint_path is None and not pretrained:
        return {}
    return dict(checkpoint_path=None if checkpoint_path is None else str(checkpoint_path), pretrained=bool(pretrained))


def _nchw(x: Tensor) -> Tensor:
    """NHWC (timm Swin's layout) -> NCHW (the decoders' layout). The one conversion point."""
    return x.permute(0, 3, 1, 2)


class VTAGML(nn.Module):
    """Frozen Swin with task-adapted layers, per-task decoders and heads.

    Args:
        backbone: timm Swin / Swin V2 model name.
        tasks: task names (see ``vtagml.tasks.TASK_REGISTRY``) or :class:`~vtagml.tasks.Task` objects.
        num_classes: classes of classification tasks (e.g. ``semseg``) given by name.
        task_weights: loss weights of tasks given by name, e.g. ``{"normals": 10, "edges": 50}`` (default 1).
        task_options: other options of tasks given by name, e.g. ``{"depth": {"loss": "silog"}}``.
        img_size: nominal input size (sets timm's window clamping); any size runs.
        pretrained: load timm's pretrained weights (needs the hub).
        checkpoint_path: local backbone weights (``.safetensors`` or a torch state dict).
        backbone_kwargs: timm architecture overrides (``embed_dim``, ``depths``, ``num_heads``,
            ``window_size``) for a custom small Swin.
        adapt_last_k: blocks of the second-to-last stage that are adapted (the last stage always is).
        embed_dim: task embedding size d (paper: 343 = 7 * 49; a width, whatever the window).
        use_taa, use_tsn, use_bottleneck: ablation switches. Without TSN every norm (the bottleneck's
            too) is a plain LayerNorm; without TAA and TSN (and a shared decoder) nothing reads the
            task embeddings and they are frozen: the plain-adapter baseline.
        bottleneck_reduction: r, bottleneck width C / r.
        taa_block_size: m, the TAA block side (default: the window side).
        train_adapted_blocks: also train the adapted blocks' pretrained weights.
        train_trunk: also train the trunk (with ``train_adapted_blocks``: the whole backbone is
            fine-tuned, the ``mtl-ft`` baseline). The trunk still runs once per image.
        decoder: ``"fpn"`` or ``"swin_unet"``.
        decoder_channels: decoder width.
        shared_decoder: one decoder for all tasks, FiLM-conditioned on c_t, instead of one per task.
        image_skip_stride: FPN image branch stride (1, 2, or 0 for none), for every task or per task
            name, e.g. ``{"edges": 1}`` (tasks not named: 2). Edges need full resolution: their
            labels are one pixel thick and the edge metric matches within a pixel.
        head_upsample: how heads reach the image size from the decoder's stride, ``"bilinear"`` or
            ``"pixel_shuffle"`` (:class:`~vtagml.models.decoders.TaskHead`), for every task or per
            task name, e.g. ``{"edges": "pixel_shuffle"}`` (tasks not named: bilinear): one-pixel
            edges from a stride-2 decoder, at a third of a stride-1 decoder's cost.
    """

    def __init__(
        self,
        backbone: str = "swin_tiny_patch4_window7_224",
        tasks: Sequence[str | Task] = ("semseg", "depth", "normals", "edges"),
        num_classes: int | None = None,
        task_weights: dict[str, float] | None = None,
        task_options: dict[str, dict[str, Any]] | None = None,
        img_size: int | tuple[int, int] = 224,
        pretrained: bool = False,
        checkpoint_path: str | os.PathLike | None = None,
        backbone_kwargs: dict | None = None,
        adapt_last_k: int = 4,
        embed_dim: int = 343,
        use_taa: bool = True,
        use_tsn: bool = True,
        use_bottleneck: bool = True,
        bottleneck_reduction: int = 4,
        taa_block_size: int | None = None,
        train_adapted_blocks: bool = False,
        train_trunk: bool = False,
        decoder: str = "fpn",
        decoder_channels: int = 64,
        shared_decoder: bool = False,
        image_skip_stride: int | dict[str, int] = 2,
        head_upsample: str | dict[str, str] = "bilinear",
    ):
        super().__init__()
        tasks = [task_from_spec(t) if isinstance(t, dict) else t for t in tasks]
        for arg, given in (("task_weights", task_weights), ("task_options", task_options)):
            unknown = sorted(set(given or {}) - {t for t in tasks if isinstance(t, str)})
            if unknown:
                raise ValueError(f"{arg} names task(s) {unknown} not given by name (a Task object carries its "
                                 f"own options) or not in the model's tasks")
        self.tasks: list[Task] = build_tasks(tasks, num_classes=num_classes, weights=task_weights, options=task_options)
        if not self.tasks:
            raise ValueError("VTAGML needs at least one task")
        self.task_names = [t.name for t in self.tasks]
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose from {sorted(DECODERS)}")
        self.train_adapted_blocks, self.train_trunk = train_adapted_blocks, train_trunk

        net = create_backbone(backbone, img_size, pretrained, checkpoint_path, **(backbone_kwargs or {}))
        cfg = resolve_model_data_config(net)
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        split = split_swin(net, adapt_last_k)
        self.channels, self.reductions = split.channels, split.reductions
        self.trunk = nn.ModuleDict(dict(patch_embed=split.patch_embed, stages=split.trunk_stages,
                                        head=split.trunk_head))
        self.trunk.requires_grad_(train_trunk)

        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.embed_dim = embed_dim
        self.embeddings = TaskEmbeddings(len(self.tasks), self.embed_dim)
        self.embeddings.requires_grad_(use_taa or use_tsn or shared_decoder)  # frozen when nothing reads c_t
        layer_kw = dict(cond_dim=self.embed_dim, use_taa=use_taa, use_tsn=use_tsn, use_bottleneck=use_bottleneck,
                        bottleneck_reduction=bottleneck_reduction, taa_block_size=taa_block_size)
        third = [AdapterLayer(b, **layer_kw) for b in split.adapted_blocks]
        last = [AdapterLayer(b, skip_dim=self.channels[-2] if (i == 0 and third) else None, **layer_kw)
                for i, b in enumerate(split.last_blocks)]
        self.num_third = len(third)
        self.adapters = nn.ModuleList(third + last)
        self.last_downsample = split.last_downsample
        for p in self._pretrained_branch_parameters():
            p.requires_grad_(train_adapted_blocks)

        self.troa = TaskAffinity(len(self.tasks))  # A and its measurement (buffers in checkpoints)

        dec_cls = DECODERS[decoder]
        dec_kw = dict(in_channels=self.channels, strides=self.reductions, channels=decoder_channels)
        self.image_skip_stride = dict(image_skip_stride) if isinstance(image_skip_stride, dict) else image_skip_stride
        unknown = sorted(set(image_skip_stride) - set(self.task_names)) if isinstance(image_skip_stride, dict) else []
        if unknown:
            raise ValueError(f"image_skip_stride names task(s) {unknown} the model does not have ({self.task_names})")
        self.head_upsample = dict(head_upsample) if isinstance(head_upsample, dict) else head_upsample
        per_task = self.head_upsample if isinstance(head_upsample, dict) else {}
        unknown = sorted(set(per_task) - set(self.task_names))
        if unknown:
            raise ValueError(f"head_upsample names task(s) {unknown} the model does not have ({self.task_names})")
        bad = sorted(set(per_task.values() if per_task else [head_upsample]) - set(HEAD_UPSAMPLING))
        if bad:
            raise ValueError(f"head_upsample must be one of {HEAD_UPSAMPLING}, got {bad}")
        if isinstance(image_skip_stride, dict) and (shared_decoder or decoder != "fpn"):
            raise ValueError("a per-task image_skip_stride needs per-task FPN decoders (decoder='fpn', "
                             "shared_decoder=False)")
        if decoder == "fpn":
            dec_kw["image_skip_stride"] = self._image_stride(None)
        else:
            dec_kw["img_size"] = img_size
        self._build_decoder = functools.partial(dec_cls, **dec_kw)  # the template's recipe: new tasks' decoders
        template = self._build_decoder()
        self.shared_decoder = shared_decoder
        if shared_decoder:
            self.decoder = template
            self.decoder_film = nn.Linear(self.embed_dim, 2 * template.out_channels)
            nn.init.zeros_(self.decoder_film.weight)
            nn.init.zeros_(self.decoder_film.bias)
        else:
            # every task starts from the same decoder weights theta_0, kept (as buffers) so that
            # decoders compose as task vectors theta_0 + sum_j a_j (theta_j - theta_0) and new tasks start there
            self.decoders = nn.ModuleDict({t.name: self._task_decoder(template, t.name) for t in self.tasks})
            self.decoder_init = _frozen_copy(template)
        self.heads = nn.ModuleDict({t.name: self._task_head(t) for t in self.tasks})
        #: every constructor argument, JSON-ready (tasks as specs): rebuilds this model with :meth:`from_config`
        self.config = dict(
            backbone=backbone, tasks=[t.spec() for t in self.tasks], num_classes=num_classes,  # specs carry weights
            img_size=list(img_size) if isinstance(img_size, (tuple, list)) else img_size, pretrained=pretrained,
            checkpoint_path=None if checkpoint_path is None else str(checkpoint_path),
            backbone_kwargs=dict(backbone_kwargs or {}), adapt_last_k=adapt_last_k, embed_dim=self.embed_dim,
            use_taa=use_taa, use_tsn=use_tsn, use_bottleneck=use_bottleneck, bottleneck_reduction=bottleneck_reduction,
            taa_block_size=taa_block_size, train_adapted_blocks=train_adapted_blocks, train_trunk=train_trunk, decoder=decoder,
            decoder_channels=decoder_channels, shared_decoder=shared_decoder, image_skip_stride=self.image_skip_stride,
            head_upsample=self.head_upsample)
        self.train()

    def _image_stride(self, task_name: str | None) -> int:
        """The FPN image branch stride of a task (``None``: of the decoders' common template)."""
        if isinstance(self.image_skip_stride, dict):
            return self.image_skip_stride.get(task_name, 2)
        return self.image_skip_stride

    def _task_head(self, task: Task, decoder: nn.Module | None = None, upsample: str | None = None) -> TaskHead:
        """A new head for ``task`` on a decoder's output (channels, stride; by default the task's
        decoder, upsampling as configured), initialized by the task."""
        if decoder is None:
            decoder = self.decoder if self.shared_decoder else self.decoders[task.name]
        if upsample is None:
            upsample = self.head_upsample
            if isinstance(upsample, dict):
                upsample = upsample.get(task.name, "bilinear")
        head = TaskHead(decoder.out_channels, task.channels, decoder.out_stride, upsample)
        task.init_head(head.conv)
        return head

    def _initial_decoder(self, stride: int) -> nn.Module:
        """A new decoder at the decoders' common initialization theta_0, its image branch (FPN) at
        ``stride``: built as the constructor built the template (whatever branch the known tasks
        have), then theta_0 loaded, on theta_0's device and dtype."""
        with torch.random.fork_rng(devices=[]):  # its random init is replaced: the RNG stream stays as it was
            decoder = self._build_decoder()
        if isinstance(decoder, FPNDecoder) and stride != decoder.image_skip_stride:
            decoder.set_image_stride(stride)
        init = self.decoder_init.state_dict()
        decoder.load_state_dict({k: v for k, v in init.items() if k in decoder.state_dict()})
        ref = next(t for t in init.values() if t.is_floating_point())
        return decoder.to(device=ref.device, dtype=ref.dtype)

    def _task_decoder(self, template: nn.Module, task_name: str) -> nn.Module:
        """A copy of ``template`` (same weights) for ``task_name``, at that task's image stride."""
        decoder = copy.deepcopy(template)
        stride = self._image_stride(task_name)
        if isinstance(decoder, FPNDecoder) and stride != decoder.image_skip_stride:
            decoder.set_image_stride(stride)
        return decoder

    # ------------------------------------------------------------------ identity and persistence
    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides) -> "VTAGML":
        """A model from :attr:`config` (e.g. ``overrides`` pointing the backbone at local weights)."""
        return cls(**{**config, **overrides})

    def backbone_fingerprint(self) -> str:
        """SHA-256 of the frozen backbone weights (trunk and, unless trained, the adapted blocks'
        pretrained weights): adapters trained on one backbone refuse another."""
        h = hashlib.sha256()
        for i, p in enumerate(self._frozen_backbone_parameters()):
            t = p.detach().cpu().contiguous()
            h.update(f"{i}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records about this model: config, task names, backbone fingerprint, version."""
        from vtagml import __version__
        return {"config": self.config, "task_names": list(self.task_names),
                "backbone_fingerprint": self.backbone_fingerprint(), "vtagml_version": __version__}

    def align_task_state(self, state: dict[str, Tensor], saved_task_names: Sequence[str], prefix: str = "") -> None:
        """Reorder, in place, the per-task rows of ``state`` saved with ``saved_task_names`` into this
        model's task order (task embeddings and TROA buffers are stored by position; decoders and
        heads by name). A different task set is refused, naming the tasks."""
        saved = list(saved_task_names)
        if sorted(saved) != sorted(self.task_names):
            missing = [t for t in self.task_names if t not in saved]
            extra = [t for t in saved if t not in self.task_names]
            raise ValueError(f"saved state is for tasks {saved}, this model has {self.task_names}: "
                             f"missing {missing}, unexpected {extra}")
        if saved == self.task_names:
            return
        order = torch.tensor([saved.index(t) for t in self.task_names])
        for key in (f"{prefix}embeddings.weight",):
            if key in state:
                state[key] = state[key][order]
        for name, _ in self.troa.named_buffers():
            key = f"{prefix}troa.{name}"
            if key in state:
                state[key] = state[key][order][:, order]

    def save_adapters(self, directory: str | os.PathLike) -> Path:
        """Write the trained model as a directory: ``config.json`` (every constructor argument, task
        specs, backbone name and fingerprint, library version) and ``adapters.safetensors`` (the
        trained tensors). :meth:`from_adapters` rebuilds the model from it and a copy of the backbone."""
        from safetensors.torch import save_file

        from vtagml.data.io import atomic_write
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
        text = json.dumps(self.describe(), indent=2)
        atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
        return directory

    @classmethod
    def from_adapters(cls, directory: str | os.PathLike, checkpoint_path: str | os.PathLike | None = None,
                      pretrained: bool | None = None, **overrides) -> "VTAGML":
        """Rebuild a model saved by :meth:`save_adapters`.

        Args:
            directory: the saved model directory.
            checkpoint_path, pretrained: where the frozen backbone comes from (default: as saved).
            overrides: other constructor arguments to change (architecture changes will not load).

        Raises:
            ValueError: when the backbone's fingerprint differs from the one the adapters were trained on.
        """
        saved = _read_saved(directory)
        model = cls.from_config(saved["config"], **_backbone_source(checkpoint_path, pretrained), **overrides)
        model._load_saved(directory, saved)
        return model

    def _load_saved(self, directory: str | os.PathLike, saved: dict) -> None:
        """Load a saved directory's tensors, refusing a backbone of another fingerprint."""
        from safetensors.torch import load_file
        fingerprint = self.backbone_fingerprint()
        if fingerprint != saved["backbone_fingerprint"]:
            raise ValueError(
                f"{directory}: the adapters were trained on backbone {saved['config']['backbone']!r} with weights "
                f"fingerprint {saved['backbone_fingerprint'][:16]}..., but the backbone loaded now "
                f"({self.config['checkpoint_path'] or ('pretrained' if self.config['pretrained'] else 'random init')})"
                f" has {fingerprint[:16]}...; pass the backbone weights they were trained on")
        path = Path(directory) / WEIGHTS_FILE
        state = load_file(str(path))
        self.align_task_state(state, saved["task_names"])
        try:
            self.load_trainable_state_dict(state)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    # ------------------------------------------------------------------ parameters
    def _pretrained_branch_parameters(self) -> Iterator[nn.Parameter]:
        for layer in self.adapters:
            yield from layer.pretrained_parameters()
        yield from self.last_downsample.parameters()

    def _frozen_backbone_parameters(self) -> Iterator[nn.Parameter]:
        """The pretrained weights this configuration keeps frozen (what the fingerprint covers)."""
        if not self.train_trunk:
            yield from self.trunk.parameters()
        if not self.train_adapted_blocks:
            yield from self._pretrained_branch_parameters()

    def _components(self) -> dict[str, list[nn.Parameter]]:
        comps = {"trunk": list(self.trunk.parameters()),
                 "adapted_blocks": list(self._pretrained_branch_parameters()),
                 "taa": [p for l in self.adapters if l.taa is not None for p in l.taa.parameters()],
                 "tsn": [p for l in self.adapters for t in l.task_norms()
                         for p in (*t.delta_scale.parameters(), *t.delta_shift.parameters())],
                 "bottleneck": [p for l in self.adapters for m in (l.bottleneck, l.skip_proj) if m is not None
                                for n, p in m.named_parameters() if ".delta_" not in n],
                 "embeddings": list(self.embeddings.parameters()),
                 "decoders": list(self.decoder.parameters()) + list(self.decoder_film.parameters())
                 if self.shared_decoder else list(self.decoders.parameters()),
                 "heads": list(self.heads.parameters())}
        return comps

    def parameter_report(self) -> dict:
        """Trainable and frozen parameter counts per component, totals and trainable fraction, and the
        adapters (TAA, TSN, bottleneck, task embeddings) against the backbone (trunk and adapted blocks)."""
        comps = self._components()
        seen = {id(p) for ps in comps.values() for p in ps}
        stray = [n for n, p in self.named_parameters() if id(p) not in seen]
        if stray:
            raise RuntimeError(f"parameters outside every component: {stray}")
        report = {name: {"trainable": sum(p.numel() for p in ps if p.requires_grad),
                         "frozen": sum(p.numel() for p in ps if not p.requires_grad)}
                  for name, ps in comps.items()}
        trainable = sum(r["trainable"] for r in report.values())
        total = trainable + sum(r["frozen"] for r in report.values())
        report["total"] = {"trainable": trainable, "frozen": total - trainable}
        report["trainable_fraction"] = trainable / total
        size = {k: v["trainable"] + v["frozen"] for k, v in report.items() if isinstance(v, dict) and k != "total"}
        report["backbone_parameters"] = size["trunk"] + size["adapted_blocks"]
        report["adapter_parameters"] = size["taa"] + size["tsn"] + size["bottleneck"] + size["embeddings"]
        report["adapters_per_backbone"] = report["adapter_parameters"] / max(1, report["backbone_parameters"])
        return report

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Trainable parameters to exclude from weight decay: biases, norms, embeddings, TAA patterns."""
        return {n for n, p in self.named_parameters()
                if p.requires_grad and (p.ndim <= 1 or n.startswith("embeddings.") or n.endswith("taa.pattern"))}

    @torch.jit.ignore
    def modulation_parameters(self) -> set[str]:
        """Trainable parameters that modulate the frozen blocks from c_t: TSN deltas and TAA (the
        optimizer gives them ``lr * modulation_lr``, see :class:`MultitaskModule`)."""
        return {n for n, p in self.named_parameters() if p.requires_grad and (".delta_" in n or ".taa." in n)}

    def _task_state_buffers(self) -> dict[str, Tensor]:
        """Buffers that belong with the adapters: TROA state and the decoders' common initialization."""
        named = {f"troa.{n}": b for n, b in self.troa.named_buffers()}
        if not self.shared_decoder:
            named.update({f"decoder_init.{n}": b for n, b in self.decoder_init.named_buffers()})
        return named

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a copy of the backbone needs to become this model: every parameter but the frozen
        backbone weights (whatever is frozen for the moment), TROA buffers and the decoders' theta_0."""
        backbone = {id(p) for p in self._frozen_backbone_parameters()}
        state = {n: p.detach().clone() for n, p in self.named_parameters() if id(p) not in backbone}
        state.update({n: b.clone() for n, b in self._task_state_buffers().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`trainable_state_dict` output onto a model with the same backbone config."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"adapter state does not match this model: missing keys {missing[:20]}; "
                             f"unexpected keys {unexpected[:20]}")
        bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
        if bad:
            shapes = ", ".join(f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k].shape)})" for k in bad[:5])
            raise ValueError(f"adapter state has wrong shapes for {len(bad)} tensor(s): {shapes}; saved by a model "
                             f"with other layers (another configuration or vtagml version)")
        own = dict(self.named_parameters()) | self._task_state_buffers()
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)

    # ------------------------------------------------------------------ growing by tasks
    def add_task(self, task: str | Task, num_classes: int | None = None,
                 composition: dict[str, float] | None = None) -> Task:
        """Add a task in place, leaving every existing task's state (and so its outputs) unchanged.

        Without ``composition`` the new task gets a fresh embedding and a decoder starting at the
        decoders' common initialization theta_0 (to train with its labels: :meth:`train_only`).
        With ``composition`` (weights over known tasks, e.g. affinities) it is composed without
        labels (zero-shot, DESIGN.md section 8): embedding ``E_n = sum_j a_j E_j``; decoder
        ``theta_0 + sum_j a_j (theta_j - theta_0)``; head ``sum_j a_j head_j`` over the known tasks
        of the same kind and channels (weights renormalized over them).

        Returns the new :class:`Task`. Its affinity row and column start as the identity prior.
        """
        task = build_tasks([task], num_classes=num_classes)[0]
        if task.name in self.task_names:
            raise ValueError(f"model already has task {task.name!r}")
        weights = _composition_weights(composition, self.task_names) if composition is not None else None
        head_weights = None
        if weights is not None:
            same = {n: a for n, a in weights.items()
                    if self.tasks[self.task_names.index(n)].kind == task.kind
                    and self.tasks[self.task_names.index(n)].channels == task.channels}
            if not same or sum(same.values()) <= 0:
                raise ValueError(f"zero-shot task {task.name!r} (kind {task.kind!r}, {task.channels} channels) needs "
                                 f"weight on a known task of the same kind; got {composition}")
            head_weights = _composition_weights(same, list(same))
        # the new task reads and upsamples as the first known task of its kind (the config's mappings
        # get the same entries); everything is built and checked before the model changes
        same_kind = [n for n, t in zip(self.task_names, self.tasks) if t.kind == task.kind]
        upsample = self.head_upsample
        if isinstance(upsample, dict):
            upsample = upsample.get(same_kind[0], "bilinear") if same_kind else "bilinear"
        stride = None
        if not self.shared_decoder:
            stride = self._image_stride(same_kind[0] if same_kind else task.name)
            decoder = self._initial_decoder(stride)
            if weights is not None:
                _compose_into(decoder, self.decoder_init, [self.decoders[n] for n in weights], list(weights.values()))
        else:
            decoder = self.decoder
        head = self._task_head(task, decoder, upsample)
        if head_weights is not None:
            shapes = {n: tuple(self.heads[n].conv.weight.shape) for n in head_weights}
            if any(shape != tuple(head.conv.weight.shape) for shape in shapes.values()):
                raise ValueError(f"zero-shot task {task.name!r}: its head ({decoder.out_channels} decoder channels, "
                                 f"stride {decoder.out_stride}, weight {tuple(head.conv.weight.shape)}) cannot be composed "
                                 f"from heads of other shapes: {shapes}; compose from tasks whose decoders match")
            with torch.no_grad():
                for name, p in head.named_parameters():
                    p.copy_(sum(a * self.heads[n].get_parameter(name) for n, a in head_weights.items()))

        device = self.embeddings.weight.device
        with torch.no_grad():
            if weights is None:
                row = torch.randn(1, self.embed_dim, device=device) * self.embeddings.weight.std().clamp_min(1e-3)
            else:
                row = sum(a * self.embeddings.weight[self.task_names.index(n)] for n, a in weights.items()).view(1, -1)
            self.embeddings.weight = nn.Parameter(torch.cat([self.embeddings.weight.detach(), row.to(device)]),
                                                  requires_grad=self.embeddings.weight.requires_grad)
        self.troa.add_task()
        if isinstance(self.head_upsample, dict) and same_kind and same_kind[0] in self.head_upsample:
            self.head_upsample[task.name] = upsample
        if isinstance(self.image_skip_stride, dict) and stride is not None and stride != 2:
            self.image_skip_stride[task.name] = stride
        if not self.shared_decoder:
            self.decoders[task.name] = decoder
        self.heads[task.name] = head.to(device)
        self.tasks.append(task)
        self.task_names.append(task.name)
        self.config["tasks"].append(task.spec())
        return task

    def replace_task(self, name: str, task: Task) -> None:
        """Put ``task`` (another name or label space, the same head outputs) in the place of task
        ``name``, keeping its state: decoder, head, embedding and affinities."""
        i = self.task_indices([name])[0]
        if task.channels != self.tasks[i].channels:
            raise ValueError(f"task {task.name!r} needs {task.channels} head outputs, {name!r} has {self.tasks[i].channels}")
        if task.name != name and task.name in self.task_names:
            raise ValueError(f"model already has task {task.name!r}")
        for modules in ([self.heads] + ([] if self.shared_decoder else [self.decoders])):
            items = [(task.name if k == name else k, m) for k, m in modules.items()]
            modules.clear()
            modules.update(items)
        for per_task in (self.image_skip_stride, self.head_upsample):  # the config's own mappings
            if isinstance(per_task, dict) and name in per_task:
                per_task[task.name] = per_task.pop(name)
        self.tasks[i], self.task_names[i], self.config["tasks"][i] = task, task.name, task.spec()

    def train_only(self, task_name: str) -> "torch.utils.hooks.RemovableHandle":
        """Freeze everything but ``task_name``'s decoder, head and embedding row (for adding a task
        with labels: every other task's state stays bit-identical). Returns the hook handle that
        masks the other embedding rows' gradients (``.remove()`` it when done). The optimizer must not
        decay the embeddings (``no_weight_decay`` lists them; :class:`MultitaskModule` honours it)."""
        idx = self.task_indices([task_name])[0]
        for p in self.parameters():
            p.requires_grad_(False)
        own = [self.heads[task_name]] + ([] if self.shared_decoder else [self.decoders[task_name]])
        for m in own:
            m.requires_grad_(True)
        self.embeddings.weight.requires_grad_(True)
        mask = torch.zeros_like(self.embeddings.weight[:, :1])
        mask[idx] = 1.0
        return self.embeddings.weight.register_hook(lambda g: g * mask)

    def train(self, mode: bool = True) -> "VTAGML":
        """Frozen parts stay in eval mode (no dropout or drop-path) whatever ``mode`` is."""
        super().train(mode)
        if not self.train_trunk:
            self.trunk.eval()
        if not self.train_adapted_blocks:
            for layer in self.adapters:
                layer.block.eval()
            self.last_downsample.eval()
        return self

    # ------------------------------------------------------------------ forward
    def task_indices(self, tasks: Sequence[str] | None) -> list[int]:
        if tasks is None:
            return list(range(len(self.tasks)))
        unknown = [t for t in tasks if t not in self.task_names]
        if unknown:
            raise KeyError(f"model has no task(s) {unknown}; it predicts {self.task_names}")
        return [self.task_names.index(t) for t in tasks]

    def _as_unit_range(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) floats in [0, 1]; uint8 images are divided by 255; anything else is refused."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            return images.to(self.mean.dtype) / 255.0
        if not images.is_floating_point():
            raise ValueError(f"images must be floats in [0, 1] or uint8, got dtype {images.dtype}")
        msg = "images must be in [0, 1] (0-255 images: pass uint8, or divide by 255)"
        if images.device.type == "cpu":  # a host check is free here; on accelerators it is asynchronous
            lo, hi = float(images.amin()), float(images.amax())
            if not (lo >= -1e-3 and hi <= 1.0 + 1e-3):  # NaN fails too
                raise ValueError(f"{msg}; got values in [{lo:g}, {hi:g}]")
        else:
            torch._assert_async((images.amin() >= -1e-3) & (images.amax() <= 1.0 + 1e-3), msg)
        return images

    def encode(self, images: Tensor, trunk_outputs: tuple[Tensor, list[Tensor]] | None = None) -> Encoded:
        """Run the trunk once (no autograd unless ``train_trunk``). images: (B, 3, H, W) in [0, 1].

        ``trunk_outputs``: ``(z, skips)`` of these very images from an earlier call (a frozen trunk's
        :class:`~vtagml.engine.trunk_cache.TrunkCache`): the trunk is skipped.
        """
        images = self._as_unit_range(images)
        h, w = images.shape[-2:]
        stride = self.reductions[-1]
        x = (images - self.mean.to(images)) / self.std.to(images)
        x = F.pad(x, (0, (-w) % stride, 0, (-h) % stride))
        if trunk_outputs is not None:
            z, skips = trunk_outputs
        else:
            with torch.set_grad_enabled(self.train_trunk and torch.is_grad_enabled()):
                feat = self.trunk["patch_embed"](x)
                skips = []
                for stage in self.trunk["stages"]:
                    feat = stage(feat)
                    skips.append(feat)
                z = self.trunk["head"](feat)
        # the decoders' image branch meets NHWC-strided (channels-last) features from the Swin: one
        # layout for all of their convolutions avoids slow mixed-layout kernels (1.3x a CPU step)
        return Encoded(z=z, skips=skips, image=x.contiguous(memory_format=torch.channels_last), size=(h, w))

    def task_affinity(self) -> Tensor:
        """(T, T) TROA affinities A in task order: ``A[i, j]`` is the share of task j's own-step
        gain that a step on task i gives (rows: the task whose step is taken; diagonal 1)."""
        return self.troa.affinity.detach().clone()

    def conditioning_weights(self) -> Tensor:
        """(T, T) mixing weights alpha in task order: ``c_t = sum_j alpha[t, j] E_j`` (rows sum to 1)."""
        return self.troa.conditioning_weights()

    def conditioning(self, task_idx: Sequence[int]) -> Tensor:
        """(len(task_idx), d) conditioning vectors ``c_t = sum_j alpha[t, j] E_j``."""
        return self.embeddings(self.troa.conditioning_weights()[list(task_idx)])

    def adapted_features(self, z_all: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Adapted stages for rows of z_all (R, h, w, C) with conditioning (R, d).

        Returns the second-to-last and last stage outputs, NHWC.
        """
        x, skip, third = z_all, None, z_all
        for i, layer in enumerate(self.adapters):
            if i == self.num_third:
                third = x
                x = self.last_downsample(x)
            x, skip = layer(x, cond, skip)
        return third, x

    def forward_branches(self, enc: Encoded, task_idx: Sequence[int], z_all: Tensor | None = None) -> dict[str, Tensor]:
        """Predictions of the tasks ``task_idx`` from a trunk output.

        Args:
            enc: :meth:`encode` output.
            task_idx: task indices, in output order.
            z_all: optional (T*B, h, w, C) branch inputs, task-major (TROA passes leaf copies of
                z here to read per-task gradients); default: z repeated for every task.
        """
        b = enc.z.shape[0]
        num = len(task_idx)
        if z_all is None:
            z_all = enc.z.unsqueeze(0).expand(num, *enc.z.shape).reshape(num * b, *enc.z.shape[1:])
        cond = self.conditioning(task_idx).repeat_interleave(b, dim=0)  # (T*B, d)
        third, last = self.adapted_features(z_all, cond)
        skips = [_nchw(s) for s in enc.skips]
        padded = tuple(enc.image.shape[-2:])
        out = {}
        if self.shared_decoder:
            feats = [s.repeat(num, 1, 1, 1) for s in skips] + [_nchw(third), _nchw(last)]
            dec = self.decoder(feats, enc.image.repeat(num, 1, 1, 1))
            gamma, beta = self.decoder_film(cond).chunk(2, dim=-1)
            dec = dec * (1 + gamma[..., None, None]) + beta[..., None, None]
            per_task = dec.split(b)
        else:
            per_task = [self.decoders[self.task_names[t]](skips + [_nchw(f3), _nchw(f4)], enc.image)
                        for t, f3, f4 in zip(task_idx, third.split(b), last.split(b))]
        h, w = enc.size
        for t, feat in zip(task_idx, per_task):
            task = self.tasks[t]
            raw = self.heads[task.name](feat, padded)[..., :h, :w]
            out[task.name] = task.postprocess(raw)
        return out

    def forward(self, images: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Predict every requested task (all by default) for images (B, 3, H, W) in [0, 1].

        Returns ``{task: prediction}`` at the input size: semseg logits (B, C, H, W), depth in
        metres (B, 1, H, W), unit normals (B, 3, H, W), edge logits (B, 1, H, W).
        """
        return self.forward_branches(self.encode(images), self.task_indices(tasks))

    def forward_features(self, images: Tensor, task: str) -> list[Tensor]:
        """The adapted encoder's per-stage features for ``task``, NHWC like timm's
        ``features_only`` Swin (at the padded input size)."""
        enc = self.encode(images)
        idx = self.task_indices([task])
        cond = self.conditioning(idx).expand(enc.z.shape[0], -1)
        third, last = self.adapted_features(enc.z, cond)
        return [*enc.skips, third, last]



class SavedModel(VTAGML):
    """A saved model directory (:meth:`VTAGML.save_adapters`) ready to test on a dataset, for a
    LightningCLI config's ``model.net`` (``class_path: vtagml.SavedModel``; no ``--ckpt_path``).

    Args:
        directory: the saved model directory.
        tasks, num_classes: the data's tasks and classes (the CLI links them from ``data``); checked.
        task_map: the data's name -> the model's name of a task the datasets name differently
            (e.g. ``{depth_zbuffer: depth}``: NYUD-v2's Kinect depth is Taskonomy's z-buffer depth).
        class_maps: task -> declared class map (:data:`vtagml.data.class_maps.CLASS_MAPS`) from the
            model's classes to the data's, e.g. ``{semseg: nyudv2->taskonomy}``.
        checkpoint_path, pretrained: where the frozen backbone comes from (default: as saved).
    """

    def __init__(self, directory: str | os.PathLike, tasks: Sequence[str] | None = None,
                 num_classes: int | None = None, task_map: dict[str, str] | None = None,
                 class_maps: dict[str, str] | None = None, checkpoint_path: str | os.PathLike | None = None,
                 pretrained: bool | None = None):
        from vtagml.data.class_maps import CLASS_MAPS
        from vtagml.tasks import ClassMapped

        saved = _read_saved(directory)
        super().__init__(**{**saved["config"], **_backbone_source(checkpoint_path, pretrained)})
        self._load_saved(directory, saved)
        for data_name, model_name in (task_map or {}).items():
            if model_name not in self.task_names:
                raise ValueError(f"task_map {{{data_name}: {model_name}}}: the model in {directory} has no task "
                                 f"{model_name!r}; it has {self.task_names}")
            spec = self.tasks[self.task_names.index(model_name)].spec()
            self.replace_task(model_name, task_from_spec({**spec, "init_args": {**spec["init_args"], "name": data_name}}))
        for name, mapping in (class_maps or {}).items():
            if name not in self.task_names:
                raise ValueError(f"class_maps names task {name!r}; the model in {directory} has {self.task_names}")
            old = self.tasks[self.task_names.index(name)]
            new = ClassMapped(mapping, name=name, weight=old.weight)
            if new.channels != old.channels:
                raise ValueError(f"class map {mapping!r} maps {new.channels} classes; the model's {name} in "
                                 f"{directory} predicts {old.channels}")
            self.replace_task(name, new)
        missing = [t for t in tasks or () if t not in self.task_names]
        if missing:
            raise ValueError(f"the data's task(s) {missing} are not tasks of the model in {directory} "
                             f"({self.task_names}); map differently named ones with task_map {{data_task: model_task}}")
        for task in self.tasks:
            if task.kind == "classes" and num_classes is not None and task.name in (tasks or ()) \
                    and task.num_classes != num_classes:
                raise ValueError(f"the model in {directory} predicts {task.num_classes} {task.name} classes, the data "
                                 f"has {num_classes}: declare a class map (class_maps: {{{task.name}: NAME}}, one of "
                                 f"{sorted(CLASS_MAPS)}) or the data's (dataset_kwargs: {{class_map: NAME}})")
