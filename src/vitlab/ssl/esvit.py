"""EsViT: view-level and region-level self-distillation (Li et al., arXiv 2106.09785, Sec. 3).

* :func:`build_esvit_network`: a backbone whose ``head`` is a DINO head and ``head_dense`` a second DINO
  head for region tokens, so ``state_dict()`` has the official checkpoint layout (for Swin). Any
  multi-stage family works: :mod:`vitlab.ssl.region_tokens` reads the view feature and the region
  tokens from its ``forward_features``.
* :func:`multicrop_forward`: runs crops of equal resolution as one batch (consecutive groups, as
  the official ``forward(list)``) and returns ``(view_logits, region_logits, region_feats, npatch)``.
* :func:`view_loss` (L_V, DINO's cross-entropy between teacher and student distributions) and
  :func:`region_loss` (L_R: each student token is matched to the teacher token of the other view
  with the highest cosine similarity of *backbone* features; Eq. 3 of the paper).
* :class:`EsViTLoss`: both with teacher centring and sharpening, centres updated by EMA and
  all-reduced across processes when a process group exists (the official ``DDINOLoss``); or, as an
  option, teacher targets from :func:`sinkhorn_knopp` (SwAV / DINOv2 centring), which balances the
  batch over the K outputs and so rules out a collapse onto a few outputs (not a uniform one).
* Schedules: :func:`cosine_schedule` (per-iteration LR, weight decay, teacher momentum) and
  :func:`teacher_temperature_schedule`; :func:`ema_update` for the teacher.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vitlab.heads.dino import DINOHead
from vitlab.ssl.region_tokens import split_features


# --- network ------------------------------------------------------------------------------------

def build_esvit_network(backbone: nn.Module, out_dim: int = 65536, norm_last_layer: bool = True,
                        hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3,
                        use_bn: bool = False, dense_head: bool = True) -> nn.Module:
    """Attach the view head (``head``) and region head (``head_dense``) to a backbone in place (Swin as in the
    paper; Pale, UniFormer, VOLO and ViT through :mod:`vitlab.ssl.region_tokens`)."""
    dim = backbone.num_features
    backbone.head = DINOHead(dim, out_dim, use_bn, norm_last_layer, nlayers, hidden_dim, bottleneck_dim)
    backbone.head_dense = (DINOHead(dim, out_dim, use_bn, norm_last_layer, nlayers, hidden_dim, bottleneck_dim)
                           if dense_head else None)
    return backbone


def group_by_resolution(crops: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(start, end) of runs of consecutive crops with the same width (``unique_consecutive``)."""
    if not crops:
        raise ValueError("multicrop_forward needs at least one crop")
    groups, start = [], 0
    for i in range(1, len(crops) + 1):
        if i == len(crops) or crops[i].shape[-1] != crops[start].shape[-1]:
            groups.append((start, i))
            start = i
    return groups


def multicrop_forward(network: nn.Module, crops: list[torch.Tensor] | torch.Tensor):
    """Run every group of equal-size crops as one batch through backbone and heads.

    Returns ``(view_logits (ncrops*B, K), region_logits (sum B*N, K) or None, region_feats (sum B*N, C),
    npatch [N per group])``; rows are crop-major (crop 0's batch first).
    """
    if isinstance(crops, torch.Tensor):
        crops = [crops]
    pooled, feats, npatch = [], [], []
    for start, end in group_by_resolution(crops):
        view, tokens, _ = split_features(network, torch.cat(crops[start:end]))
        b, n, c = tokens.shape
        pooled.append(view)
        feats.append(tokens.reshape(b * n, c))
        npatch.append(n)
    pooled, feats = torch.cat(pooled), torch.cat(feats)
    dense_head = getattr(network, "head_dense", None)
    region_logits = dense_head(feats) if dense_head is not None else None
    return network.head(pooled), region_logits, feats, npatch


# --- losses (pure functions) --------------------------------------------------------------------

def view_loss(teacher_probs: list[torch.Tensor], student_logprobs: list[torch.Tensor]) -> torch.Tensor:
    """DINO's L_V: mean over pairs (teacher view iq, student view v != iq) of batch-mean -p_t . log p_s."""
    total, pairs = 0.0, 0
    for iq, q in enumerate(teacher_probs):
        for v, s in enumerate(student_logprobs):
            if v == iq:
                continue
            total = total + torch.sum(-q * s, dim=-1).mean()
            pairs += 1
    return total / pairs


def match_regions(student_feats: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """(B, Ts) index of the teacher token with the highest cosine similarity to each student token."""
    sim = F.normalize(student_feats, dim=-1) @ F.normalize(teacher_feats, dim=-1).transpose(1, 2)
    return sim.argmax(dim=2)


def region_pair_loss(teacher_probs: torch.Tensor, teacher_feats: torch.Tensor, student_logprobs: torch.Tensor,
                     student_feats: torch.Tensor) -> torch.Tensor:
    """L_R for one (teacher view, student view) pair; inputs are (B, T, K) / (B, T, C); returns the batch mean."""
    idx = match_regions(student_feats, teacher_feats)
    matched = torch.gather(teacher_probs, 1, idx.unsqueeze(-1).expand(-1, -1, teacher_probs.shape[-1]))
    return torch.sum(-matched * student_logprobs, dim=-1).mean(-1).mean()


def region_loss(teacher_probs: list[torch.Tensor], teacher_feats: list[torch.Tensor],
                student_logprobs: list[torch.Tensor], student_feats: list[torch.Tensor]) -> torch.Tensor:
    """L_R averaged over the same view pairs as :func:`view_loss` (per-view tensors are (B, T, ·))."""
    total, pairs = 0.0, 0
    for iq in range(len(teacher_probs)):
        for v in range(len(student_logprobs)):
            if v == iq:
                continue
            total = total + region_pair_loss(teacher_probs[iq], teacher_feats[iq], student_logprobs[v],
                                             student_feats[v])
            pairs += 1
    return total / pairs


# --- schedules ----------------------------------------------------------------------------------

def teacher_temperature_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Linear warm-up of the teacher temperature over ``warmup_epochs``, then constant (DINO)."""
    return np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs),
                           np.ones(max(epochs - warmup_epochs, 0)) * temp))


def cosine_schedule(base: float, final: float, epochs: int, iters_per_epoch: int, warmup_epochs: int = 0,
                    start_warmup: float = 0.0) -> np.ndarray:
    """Per-iteration values: linear warm-up, then half-cosine from ``base`` to ``final`` (DINO's schedule)."""
    warm = np.linspace(start_warmup, base, warmup_epochs * iters_per_epoch) if warmup_epochs > 0 else np.array([])
    steps = epochs * iters_per_epoch - len(warm)
    it = np.arange(steps)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * it / max(steps, 1)))
    return np.concatenate((warm, cos))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, parameter by parameter (buffers copied)."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


def _all_reduce(x: torch.Tensor, op=None) -> torch.Tensor:
    """In-place all-reduce (sum by default) when a process group exists; identity otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets with equal total mass on every output (Caron et al. 2020, SwAV, Sec. 3.1; DINOv2 Sec. 4).

    Starts from exp(logits / T) and alternately normalises the K columns (every output gets 1/K of the
    batch) and the rows (every sample is a distribution), ``iterations`` times; sums run over all
    processes when a process group exists. (N, K) logits -> (N, K) rows that sum to 1.
    """
    q = logits.float() / temperature
    top = _all_reduce(q.max().reshape(1), dist.ReduceOp.MAX if dist.is_available() else None)
    q = torch.exp((q - top).clamp_min(-80.0)).t()                         # (K, N) in [e^-80, 1]: no empty row
    k = q.shape[0]
    n = float(_all_reduce(torch.tensor([float(q.shape[1])], device=q.device)))
    q /= _all_reduce(q.sum().reshape(1))
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True)) * k                  # each output: 1/K of the mass
        q /= q.sum(dim=0, keepdim=True) * n                               # each sample: 1/N of the mass
    return (q * n).t()


def _all_reduce_mean_rows(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows, and over processes when a process group is initialised."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return _all_reduce(x.sum(dim=0, keepdim=True)) / (len(x) * world)


# --- the loss module ----------------------------------------------------------------------------

class EsViTLoss(nn.Module):
    """Official ``DDINOLoss``: ``view_weight * L_V + region_weight * L_R`` with separate centres.

    ``forward(student_out, teacher_out, epoch)`` takes the 4-tuples of :func:`multicrop_forward`
    (the teacher sees the first ``n_global`` crops only) and updates the centres once. The parts of
    the last call are in ``self.last`` (``view``, ``region``, teacher entropy, KL to uniform).
    ``centering="sinkhorn"`` replaces ``softmax((t - centre) / T)`` by :func:`sinkhorn_knopp` for both
    the view and the region targets (the centres are still tracked, so checkpoints keep their layout).
    """

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9, n_global: int = 2, view_weight: float = 0.5,
                 region_weight: float = 0.5, centering: str = "ema"):
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be 'ema' (DINO / EsViT) or 'sinkhorn' (SwAV / DINOv2), "
                             f"got {centering!r}")
        self.centering = centering
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.ncrops, self.n_global = ncrops, n_global
        self.view_weight, self.region_weight = view_weight, region_weight
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center_grid", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temperature_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)
        self.last: dict[str, float] = {}
        self.pending: tuple | None = None

    def teacher_temperature(self, epoch: int) -> float:
        sched = self.teacher_temp_schedule
        return float(sched[min(epoch, len(sched) - 1)])

    def _split_student(self, tensor: torch.Tensor, npatch: list[int], batch: int) -> list[torch.Tensor]:
        n_local = self.ncrops - self.n_global
        sizes = [npatch[0]] * self.n_global + [npatch[-1]] * n_local
        return [t.view(batch, n, -1) for t, n in zip(torch.split(tensor, [n * batch for n in sizes]), sizes)]

    def forward(self, student_out, teacher_out, epoch: int, update_center: bool = True) -> torch.Tensor:
        """The loss; the centres move at once, or (``update_center=False``) when :meth:`apply_pending` is called -
        after the step was accepted, so a step redone in fp32 does not move them twice."""
        s_cls, s_region, s_feat, s_npatch = student_out
        t_cls, t_region, t_feat, t_npatch = teacher_out
        if len(s_cls) % self.ncrops:
            raise ValueError(f"student view logits have {len(s_cls)} rows, not a multiple of ncrops={self.ncrops}")
        temp = self.teacher_temperature(epoch)
        t_probs = self.teacher_targets(t_cls, self.center, temp).chunk(self.n_global)
        s_logp = F.log_softmax(s_cls / self.student_temp, dim=-1).chunk(self.ncrops)
        loss_v = view_loss(list(t_probs), list(s_logp))
        loss = self.view_weight * loss_v
        parts = {"view": float(loss_v.detach())}
        use_region = self.region_weight > 0 and t_region is not None and s_region is not None
        if use_region:
            batch = len(s_cls) // self.ncrops
            n_t = t_npatch[0]
            t_rprob = self.teacher_targets(t_region, self.center_grid, temp)
            t_rprob = [t.view(batch, n_t, -1) for t in t_rprob.chunk(self.n_global)]
            t_rfeat = [t.view(batch, n_t, -1) for t in t_feat.detach().chunk(self.n_global)]
            s_rlogp = self._split_student(F.log_softmax(s_region / self.student_temp, dim=-1), s_npatch, batch)
            s_rfeat = self._split_student(s_feat, s_npatch, batch)
            loss_r = region_loss(t_rprob, t_rfeat, s_rlogp, s_rfeat)
            loss = loss + self.region_weight * loss_r
            parts["region"] = float(loss_r.detach())
        parts.update(collapse_diagnostics(t_cls.detach(), self.center, temp))
        self.last = parts
        self.pending = (t_cls.detach(), t_region.detach() if use_region else None)
        if update_center:
            self.apply_pending()
        return loss

    def apply_pending(self) -> None:
        """Move the centres with the teacher outputs of the last forward (once)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self.update_center(*pending)

    @torch.no_grad()
    def teacher_targets(self, logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
        """Teacher distributions: centred and sharpened (DINO) or Sinkhorn-Knopp balanced."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(logits, temp)
        return F.softmax((logits - center) / temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_cls: torch.Tensor, teacher_region: torch.Tensor | None) -> None:
        m = self.center_momentum
        self.center.mul_(m).add_(_all_reduce_mean_rows(teacher_cls.float()), alpha=1 - m)
        if teacher_region is not None:
            self.center_grid.mul_(m).add_(_all_reduce_mean_rows(teacher_region.float()), alpha=1 - m)


@torch.no_grad()
def collapse_diagnostics(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> dict[str, float]:
    """Signals of the two DINO failure modes: per-sample teacher entropy (-> 0: one-hot collapse...) and the
    KL divergence of the batch-mean teacher distribution to uniform (-> 0: uniform collapse)."""
    p = F.softmax((teacher_logits.float() - center) / temp, dim=-1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
    mean_p = p.mean(0)
    k = p.shape[-1]
    kl_uniform = (mean_p * torch.log(mean_p.clamp_min(1e-12) * k)).sum()
    return {"teacher_entropy": float(entropy), "teacher_entropy_max": math.log(k),
            "kl_to_uniform": float(kl_uniform)}
