"""Winograd's minimal filtering in exact integers: fewer products for a stride-1 correlation.

F(2, r) (Lavin & Gray 2016) computes two outputs of an r-tap correlation from
α = r + 1 inputs with α products instead of 2r: transform the inputs (Bᵀ d),
the taps (G g), multiply elementwise, transform back (Aᵀ). In two dimensions,
F(2×2, r×s) makes a 2×2 block of outputs with α_y·α_x products instead of
4·r·s. Here every transform has small integer entries (F(2, 3)'s filter
transform scaled by 2, a power of two the caller folds into its rounding), so
with integer inputs and weights every value is an integer, and
:meth:`WinogradPhase.of` proves a bound on every partial sum: in float64 below
2^53 the result is exact whatever the summation order, the same integers as
the taps themselves. Per transform-domain element the products are one matrix
product over the input channels: ``M_ij = U_ij @ V_ij``.

Used by :mod:`vaecodec.fixedpoint` for the exact decoder's widest layers. This
module knows nothing of files, models or entropy coding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TRANSFORMS", "WinogradPhase", "combine"]

# Winograd's minimal filtering F(2, r) (Lavin & Gray 2016) in integers: r → (Bᵀ (α×α), the filter
# transform scaled to integers (α×r), Aᵀ (2×α), log2 of that scale), α = r + 1. Two outputs
# y = Aᵀ[(G g) ⊙ (Bᵀ d)] of the correlation of α inputs d with r taps g.
TRANSFORMS = {
    2: (((1, -1, 0), (0, 1, 0), (0, -1, 1)), ((1, 0), (1, 1), (0, 1)), ((1, 1, 0), (0, 1, 1)), 0),
    3: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)), ((2, 0, 0), (1, 1, 1), (1, -1, 1), (0, 0, 2)),
        ((1, 1, 1, 0), (0, 1, -1, -1)), 1),
}


def _terms(row) -> tuple:
    """The (index, ±1) pairs of a transform row's non-zero entries."""
    return tuple((k, c) for k, c in enumerate(row) if c)


@dataclass
class WinogradPhase:
    """One phase (a stride-1 correlation with ``ry`` × ``rx`` taps at offsets ``dy0..``, ``dx0..``) as
    Winograd's F(2×2, ry×rx): each 2×2 block of outputs from an α_y × α_x patch of inputs with
    α_y·α_x products instead of 4·ry·rx (16 instead of 36 for 3×3 taps, 49 instead of 100 over a
    5×5 upsampling's four phases).

    Why: on a CPU without exact int8 kernels the decoder's widest layers are
    float64 products; Winograd's transforms trade products for additions. With
    integer transforms (the filter transform scaled by 2 per F(2, 3) side, so
    the sum comes out ×2^log2, a power of two folded into the rounding's
    shift) every transformed input, weight, product and sum is an integer, and
    :meth:`of` proves every one stays below 2^53: the same integers as the taps.

    ``weights``: (α_y, α_x, cout, cin), the transformed filters ``U_ij``;
    ``bias``: the layer's bias with the rounding's half, ×2^log2, (cout, 1).
    """

    ry: int
    rx: int
    dy0: int
    dx0: int
    weights: torch.Tensor
    bias: torch.Tensor
    log2: int

    def __post_init__(self):
        bt_y, _, at_y, _ = TRANSFORMS[self.ry]
        bt_x, _, at_x, _ = TRANSFORMS[self.rx]
        self.input_rows = tuple(_terms(r) for r in bt_y)  # Bᵀ along rows, then along columns
        self.input_cols = tuple(_terms(r) for r in bt_x)
        self.output_rows = tuple(_terms(r) for r in at_y)  # Aᵀ
        self.output_cols = tuple(_terms(r) for r in at_x)
        # The product U_11 V_11 enters every output with +1 (Aᵀ's second column is (1, 1) for r = 2 and 3):
        # the bias joins it, in the product itself.
        assert all(dict(t).get(1) == 1 for t in self.output_rows + self.output_cols)

    @classmethod
    def of(cls, offsets, weights: torch.Tensor, bias_half: torch.Tensor, input_limit: float,
           sum_limit: float) -> "WinogradPhase | None":
        """From a phase's tap offsets (dy, dx) and weights (cout, taps·cin) side by side, float64 integers, and
        the layer's bias with the rounding's half (cout, 1); None where the taps are not a 2- or 3-wide
        rectangle, or where with inputs of magnitude up to ``input_limit`` a sum could reach ``sum_limit``."""
        dys, dxs = sorted({dy for dy, _ in offsets}), sorted({dx for _, dx in offsets})
        ry, rx = len(dys), len(dxs)
        if (ry not in TRANSFORMS or rx not in TRANSFORMS or len(offsets) != ry * rx
                or dys != list(range(dys[0], dys[0] + ry)) or dxs != list(range(dxs[0], dxs[0] + rx))):
            return None
        cout, cin = weights.shape[0], weights.shape[1] // len(offsets)
        taps = weights.new_empty(ry, rx, cout, cin)
        for j, (dy, dx) in enumerate(offsets):
            taps[dy - dys[0], dx - dxs[0]] = weights[:, j * cin:(j + 1) * cin]
        (bt_y, g_y, at_y, log2_y), (bt_x, g_x, at_x, log2_x) = TRANSFORMS[ry], TRANSFORMS[rx]
        g_y, g_x = (torch.tensor(g, dtype=torch.float64) for g in (g_y, g_x))
        u = torch.einsum("ia,jb,aboc->ijoc", g_y, g_x, taps).contiguous()  # small integers: exact
        bias = bias_half * 2.0 ** (log2_y + log2_x)
        # Every partial sum, of a product or of the output transform, is at most Σ_ij |Aᵀ|·‖U_ij row‖₁ times
        # the largest transformed input (Bᵀ rows add two inputs: ≤ 4·input_limit), plus the bias.
        largest_input = max(sum(map(abs, r)) for r in bt_y) * max(sum(map(abs, r)) for r in bt_x) * input_limit
        spread = torch.tensor([[max(abs(a[i]) for a in at_y) * max(abs(b[j]) for b in at_x)
                                for j in range(rx + 1)] for i in range(ry + 1)], dtype=torch.float64)
        bound = float((spread[:, :, None] * u.abs().sum(3)).sum((0, 1)).max()) * largest_input
        if bound + float(bias.abs().max()) >= sum_limit:
            return None
        return cls(ry, rx, dys[0], dxs[0], u, bias, log2_y + log2_x)

    def band(self, padded: torch.Tensor, row: int, col: int, tiles_y: int, tiles_x: int, buffers) -> list:
        """The four output blocks [y00, y01, y10, y11] (cout, tiles_y·tiles_x) (output (2t + a, 2u + b) of tile
        (t, u)), ×2^log2 and with the bias, of ``tiles_y`` × ``tiles_x`` tiles whose first patch starts at
        (``row`` + dy0, ``col`` + dx0) in ``padded`` (cin, H, W), float64. ``buffers``: float64 scratch for at
        least this band, (e (4, cin·rows·tiles_x), v (cin·count), m (4, cout·count), z (2, cout·count),
        y (4, cout·count)); the blocks returned are views of y."""
        cin, cout, count = padded.shape[0], self.weights.shape[2], tiles_y * tiles_x
        e, v, m, z, y = buffers
        r, c = row + self.dy0, col + self.dx0
        rows = 2 * tiles_y + self.ry - 1
        # Bᵀ along the columns: E_j = Σ_b Bᵀ[j, b]·d[:, :, 2u + b] for every row the band's patches cover.
        cols = [combine([(k, padded[:, r:r + rows, c + b:c + b + 2 * tiles_x - 1:2]) for b, k in t],
                         e[j, :cin * rows * tiles_x].view(cin, rows, tiles_x))
                for j, t in enumerate(self.input_cols)]
        out = [y[k, :cout * count].view(cout, count) for k in range(4)]
        for i, rows_i in enumerate(self.input_rows):
            products = []
            for j, col_j in enumerate(cols):
                # Bᵀ along the rows gives V_ij; then M_ij = U_ij V_ij (K = cin, the long dimension).
                v_ij = combine([(k, col_j[:, p:p + 2 * tiles_y - 1:2]) for p, k in rows_i],
                                v[:cin * count].view(cin, tiles_y, tiles_x)).view(cin, count)
                m_j = m[j, :cout * count].view(cout, count)
                if (i, j) == (1, 1):
                    torch.addmm(self.bias, self.weights[i, j], v_ij, out=m_j)
                else:
                    torch.mm(self.weights[i, j], v_ij, out=m_j)
                products.append(m_j)
            # Aᵀ along the columns gives Z_ib; Aᵀ along the rows adds it into the outputs it reaches.
            for b, t in enumerate(self.output_cols):
                z_b = combine([(k, products[j]) for j, k in t], z[b, :cout * count].view(cout, count))
                for a, t_a in enumerate(self.output_rows):
                    k = dict(t_a).get(i)
                    if k is None:
                        continue
                    target = out[2 * a + b]
                    if i == t_a[0][0]:  # this output's first contribution
                        target.copy_(z_b) if k == 1 else torch.neg(z_b, out=target)
                    else:
                        target.add_(z_b, alpha=k)
        return out


def combine(terms, out: torch.Tensor) -> torch.Tensor:
    """``out`` = Σ k·t over ``terms`` (k, t), every k ±1: a transform row, one pass per term after the first."""
    (k0, t0), rest = terms[0], terms[1:]
    if not rest:
        return out.copy_(t0) if k0 == 1 else torch.neg(t0, out=out)
    k1, t1 = rest[0]
    if k0 == 1:
        torch.add(t0, t1, alpha=k1, out=out)
    elif k1 == 1:
        torch.add(t1, t0, alpha=k0, out=out)
    else:
        torch.add(t0, t1, out=out).neg_()
    for k, t in rest[1:]:
        out.add_(t, alpha=k)
    return out
