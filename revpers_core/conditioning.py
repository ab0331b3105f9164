"""Identity-guided conditioning (the paper's third stage) without ComfyUI: which identity tokens each
row of a model call carries, and their keys and values in every cross-attention.

Every model call of the inversion and of the anonymized sampling carries, for each face of the chunk
under sampling, one row of the conditional branch and one of the unconditional branch. The
conditional branch carries the face's identity tokens, the unconditional branch those of the null
(zero) embedding; the inversion's model has no identity, so both branches carry the null tokens. The
host tells which part of a batch is which branch; `IdentityTokens.row_sets` turns that into the
token set of every row.

Token sets: set 0 is the null embedding's tokens, then one set per distinct embedding (faces with equal
embeddings, such as one person's faces in a clip, share a set and so get bit-identical tokens). The
identity attention of transformer block b needs K = tokens·W_k_ipᵀ and V = tokens·W_v_ipᵀ; the tokens
do not change during a run, so K and V are projected once, for every set and block, when the tokens are
made (`project_keys_values`, in float32, each set in a product of its own: a face's keys and values do not
depend on which other faces share its call). The adapter's identity projections are needed for that
moment only (the adapter reads them from its file again, then lets them go). Each call only gathers the
keys and values by row (`keys_values`), cast once to the call's dtype and device (`project`).

The tokens of a model never change once made: which faces a call carries (the chunk of faces under
sampling, see revpers_core.row_budget) is told by each call (``window``), never kept here, so a model and
all its clones, which share these tokens, compute the same whatever any of them is running.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

NULL_SET = 0  # the token set of the null (zero) embedding

# block -> (to_k_ip, to_v_ip), the identity projections of transformer block b's cross-attention
IdentityWeights = Callable[[int], Tuple[torch.Tensor, torch.Tensor]]
# per block: (K [S, T, inner], V [S, T, inner]) of every token set
KeysValues = List[Tuple[torch.Tensor, torch.Tensor]]
# (start, stop): a call carries faces start..stop-1 only; None: every face
Window = Optional[Tuple[int, int]]


def project_keys_values(token_sets: torch.Tensor, weights: IdentityWeights, blocks: int) -> KeysValues:
    """K = tokens·W_k_ipᵀ and V = tokens·W_v_ipᵀ of every token set [S, T, D] for blocks 0..blocks-1, in
    float32 on the CPU; each set in a product of its own (batch-invariant)."""
    tokens = token_sets.to(device="cpu", dtype=torch.float32)
    projected = []
    for block in range(blocks):
        to_k_ip, to_v_ip = (w.to(device="cpu", dtype=torch.float32) for w in weights(block))
        projected.append((torch.stack([F.linear(t, to_k_ip) for t in tokens]),
                          torch.stack([F.linear(t, to_v_ip) for t in tokens])))
    return projected


class IdentityTokens:
    """The identity tokens of one identity-conditioned model, their routing to the rows of a call, and
    their projected keys and values (cached per block, dtype and device).

    ``token_sets`` [S, T, D]: set 0 = the null embedding's tokens; ``face_sets`` [F]: the set of each
    face (empty for the inversion's model, which has no identity); ``scale``: the adapter scale."""

    def __init__(self, token_sets: torch.Tensor, face_sets: torch.Tensor, scale: float, projected: KeysValues):
        self.token_sets = token_sets
        self.face_sets = torch.as_tensor(face_sets, dtype=torch.long)
        self.scale = float(scale)
        self._float32 = projected  # per block (K, V) of every set, float32 on the CPU (`project_keys_values`)
        # caches of values computed from the above (never state): the casts per block, dtype and device, and
        # the keys and values gathered by row for the call layout seen last (one layout at a time)
        self._projected: Dict[Tuple[int, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}
        self._gathered: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._gathered_layout: Optional[tuple] = None

    @property
    def has_identity(self) -> bool:
        return self.face_sets.numel() > 0

    @property
    def faces(self) -> int:
        return int(self.face_sets.numel())

    # -- routing ------------------------------------------------------------------------------
    def row_sets(self, conditional: Sequence[bool], rows_per_branch: int, window: Window = None) -> torch.Tensor:
        """The token set of each row of a call whose batch is made of branches (``conditional[i]``: part i
        is the conditional branch) of ``rows_per_branch`` rows each, in that order. ``window`` (start, stop):
        the call carries faces start..stop-1 only (one chunk of the faces); None: all of them."""
        cond = self.face_sets if window is None else self.face_sets[int(window[0]):int(window[1])]
        if not self.has_identity:
            cond = torch.full((rows_per_branch,), NULL_SET, dtype=torch.long)
        elif cond.numel() != rows_per_branch:
            raise ValueError(
                f"the identity-conditioned MODEL carries {self.faces} identity embeddings but is sampling a batch of "
                f"{rows_per_branch} latents: connect exactly one embedding per face, in the order of the latents")
        null = torch.full((rows_per_branch,), NULL_SET, dtype=torch.long)
        return torch.cat([cond if c else null for c in conditional])

    # -- keys and values ----------------------------------------------------------------------
    def project(self, block: int, device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """(K, V) of every token set for transformer block ``block``: [S, T, inner] each, in ``dtype`` on
        ``device``; cast once from the float32 projection, then kept."""
        key = (block, dtype)
        cached = self._projected.get(key)
        if cached is None or cached[0].device != torch.device(device):
            cached = self._projected[key] = tuple(t.to(device=device, dtype=dtype) for t in self._float32[block])
        return cached

    def keys_values(self, block: int, conditional: Sequence[bool], rows_per_branch: int, device,
                    dtype: torch.dtype, window: Window = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(K, V) of the identity attention for every row of a call: [rows, T, inner] each (``window``: see
        `row_sets`). The same tensors are handed to every call of one layout, as long as the calls keep it
        (every call of one chunk's run); another layout lets them go."""
        window = None if window is None else (int(window[0]), int(window[1]))
        layout = (tuple(bool(c) for c in conditional), int(rows_per_branch), window, str(device), dtype)
        if layout != self._gathered_layout:
            self._gathered.clear()
            self._gathered_layout = layout
        gathered = self._gathered.get(block)
        if gathered is None:
            keys, values = self.project(block, device, dtype)
            index = self.row_sets(conditional, rows_per_branch, window).to(keys.device)
            gathered = self._gathered[block] = (keys.index_select(0, index), values.index_select(0, index))
        return gathered

    def attend(self, q: torch.Tensor, text_out: torch.Tensor, block: int, conditional: Sequence[bool],
               attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
               window: Window = None) -> torch.Tensor:
        """The identity attention of transformer block ``block``'s cross-attention: the text attention's
        output plus scale · attention(q, K_ip, V_ip), K_ip and V_ip the identity keys and values of each row
        (``conditional`` tells the branches of the batch, in order; ``attention`` is the host's; ``window``
        the faces the call carries, see `row_sets`)."""
        if q.shape[0] % len(conditional):
            raise ValueError(f"batch of {q.shape[0]} rows does not split into {len(conditional)} cond/uncond chunks")
        ip_k, ip_v = self.keys_values(block, conditional, q.shape[0] // len(conditional), q.device, q.dtype,
                                      window)
        return text_out + self.scale * attention(q, ip_k, ip_v)

    def to(self, device) -> "IdentityTokens":
        """Move the projected keys and values to ``device`` (the host moves a model's patches with it)."""
        self._gathered.clear()
        self._gathered_layout = None
        for key, (keys, values) in list(self._projected.items()):
            if keys.device != torch.device(device):
                self._projected[key] = (keys.to(device), values.to(device))
        return self

    def held_bytes(self) -> int:
        """Bytes of the projected keys and values this holds (what the identity attention keeps between calls)."""
        held = {t.data_ptr(): t for pair in list(self._projected.values()) + self._float32 for t in pair}
        return sum(t.numel() * t.element_size() for t in held.values())


def guided_rows(guided: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, rows: Sequence[int],
                scales: Sequence[float]) -> torch.Tensor:
    """``guided`` with rows ``rows`` guided by their own scales g_i: m_u + (m_c − m_u)·g_i, the host's
    classifier-free guidance formula written the same way, so a row's arithmetic depends only on its
    own scale; every other row is ``guided``'s, bit for bit (per-face guidance)."""
    out = guided.clone()
    index = torch.tensor(list(rows), device=guided.device)
    g = torch.tensor([float(s) for s in scales], dtype=guided.dtype, device=guided.device)
    g = g.view(-1, *([1] * (guided.ndim - 1)))
    out[index] = uncond[index] + (cond[index] - uncond[index]) * g
    return out


def identity_tokens(adapter, embeddings: Optional[torch.Tensor], scale: float) -> IdentityTokens:
    """The identity tokens of ``embeddings`` [F, E] (face i ↔ latent i) through the FaceID ``adapter``;
    None: the inversion's null identity on both branches."""
    token_sets, face_sets = adapter.project_identities(embeddings)
    with adapter.reading_identity_weights() as weights:
        projected = project_keys_values(token_sets, weights, adapter.num_blocks)
    return IdentityTokens(token_sets, face_sets, scale, projected)
