"""The fused CPU kernel: patterns in, orientations out, one block at a time.

Patterns are taken in blocks of ``B`` (pixel-major, see
:mod:`diffraflow.operators.indexing.radon`); blocks run in parallel with ``prange``.
Within a block the stages are: preparation (static background, optional
dynamic background, mask, standardisation), Radon transform, butterfly
filter, then per pattern peak search, band normals and voting for every
phase. Fusing them keeps each block's working set (a few hundred kB) in
cache; nothing here allocates more than per-block scratch.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from diffraflow.operators.indexing.bands import butterfly_block, find_peaks_block, sample_radon
from diffraflow.operators.indexing.geometry import band_normals, normal_to_line
from diffraflow.operators.indexing.radon import radon_block
from diffraflow.operators.indexing.refine import guided_refine
from diffraflow.operators.indexing.voting import (
    band_fit,
    matrix_to_quaternion,
    refit,
    vote_orientation,
)

__all__ = ["index_patterns_cpu", "index_filtered_cpu", "band_evidence", "BLOCK"]

#: Patterns per block: 32 float32 lanes (four AVX2 registers) give the Radon
#: scatter enough independent work to hide store-to-load latency (measured
#: 1.6-2x faster than 16); 64 makes the per-block scratch outgrow the L2 cache.
BLOCK = 32


@nb.njit(cache=True, fastmath=True, nogil=True)
def prepare_block(pats, start, stop, mask_index, bg, bg_mode, dyn_basis, dyn_pinv, x):  # pragma: no cover
    """Fill ``x`` (n_mask, B) with standardised, background-corrected patterns.

    ``bg_mode``: 0 none, 1 subtract ``bg``, 2 divide by ``bg``. ``dyn_basis``
    (K, n_mask) with its pseudo-inverse ``dyn_pinv`` (K, n_mask): a smooth
    surface fitted by least squares and subtracted (K = 0 disables it).
    Columns past ``stop - start`` are zero.
    """
    n_mask = mask_index.size
    nb_ = x.shape[1]
    n_k = dyn_basis.shape[0]
    coef = np.empty(n_k)
    for b in range(nb_):
        s = start + b
        if s >= stop:
            for p in range(n_mask):
                x[p, b] = 0.0
            continue
        for p in range(n_mask):
            q = mask_index[p]
            v = np.float32(pats[s, q])
            if bg_mode == 1:
                v -= bg[q]
            elif bg_mode == 2:
                v /= bg[q]
            x[p, b] = v
        if n_k > 0:
            for k in range(n_k):
                acc = 0.0
                for p in range(n_mask):
                    acc += dyn_pinv[k, p] * x[p, b]
                coef[k] = acc
            for p in range(n_mask):
                acc = 0.0
                for k in range(n_k):
                    acc += coef[k] * dyn_basis[k, p]
                x[p, b] -= acc
        mean = 0.0
        for p in range(n_mask):
            mean += x[p, b]
        mean /= n_mask
        var = 0.0
        for p in range(n_mask):
            d = x[p, b] - mean
            var += d * d
        sd = np.sqrt(var / n_mask)
        inv = 1.0 / sd if sd > 0 else 0.0
        for p in range(n_mask):
            x[p, b] = (x[p, b] - mean) * inv


@nb.njit(cache=True, fastmath=True, nogil=True)
def band_evidence(filt, valid, b, r, ref, ref_w, pc, nrows, ncols, m_ds, theta_step, rho_step, half):  # pragma: no cover
    """Weighted mean filtered-Radon response at every band a phase predicts.

    ``r`` is the phase's crystal-to-sample hypothesis. Phases that share the
    detected bands' directions (FCC {220}/{200} and BCC {110}/{200}) are told
    apart by the bands only one of them predicts, e.g. FCC {111}.
    """
    nvec = np.empty(3)
    acc = 0.0
    wsum = 0.0
    for h in range(ref.shape[0]):
        for a in range(3):
            nvec[a] = r[a, 0] * ref[h, 0] + r[a, 1] * ref[h, 1] + r[a, 2] * ref[h, 2]
        ok, rho, theta = normal_to_line(nvec, pc, nrows, ncols, m_ds)
        if not ok:
            continue
        ok, v = sample_radon(filt, valid, b, theta / theta_step, rho / rho_step + half)
        if not ok:
            continue
        acc += ref_w[h] * v
        wsum += ref_w[h]
    if wsum == 0.0:
        return 0.0
    return acc / wsum


#: Hypotheses kept per pattern for the confidence's runner-up search.
CAND_CAP = 2048


@nb.njit(cache=True, fastmath=True, nogil=True)
def _canonical_quat(r, sym, out):  # pragma: no cover - numba
    # Quaternion of the equivalent r @ S with the largest trace (smallest angle).
    best = -10.0
    bs = 0
    for k in range(sym.shape[0]):
        tr = 0.0
        for a in range(3):
            for c in range(3):
                tr += r[a, c] * sym[k, c, a]
        if tr > best:
            best = tr
            bs = k
    m = r @ sym[bs]
    matrix_to_quaternion(m, out)


@nb.njit(cache=True, fastmath=True, nogil=True)
def select_by_evidence(
    filt, valid, b, r_vote, cand_r, cand_score, n_cand, n_select, sym, ref, ref_w, pc, nrows, ncols,
    m_ds, theta_step, rho_step, half, r_out,
):  # pragma: no cover - numba
    """Among the best-voted distinct hypotheses, the one the Radon transform supports most.

    Voting counts only the detected peaks; at low dose several of them are
    noise and a wrong hypothesis can collect as many votes as the right one.
    The evidence (:func:`band_evidence`) integrates the filtered transform
    along *every* band a hypothesis predicts, detected or not, so it tells
    them apart. Up to ``n_select`` distinct orientations (5 degrees apart,
    symmetry included) are compared, in decreasing vote order. Returns True
    (and the winner in ``r_out``) only if it is not the voted one.
    """
    order = np.argsort(-cand_score[:n_cand], kind="mergesort")
    # Distinctness via a canonical symmetry-equivalent per hypothesis (the one
    # closest to identity, i.e. largest trace): two hypotheses are the same
    # orientation when their canonical quaternions are close. One 24-trace
    # pass per hypothesis instead of one per pair of hypotheses. Near the
    # fundamental-zone boundary the canonical choice can flip, which only
    # costs a duplicate evaluation, never a wrong merge.
    reps = np.empty((n_select, 4))
    cos_half = np.cos(np.radians(2.5))
    _canonical_quat(r_vote, sym, reps[0])
    n_dist = 1
    best_e = band_evidence(filt, valid, b, r_vote, ref, ref_w, pc, nrows, ncols, m_ds, theta_step, rho_step, half)
    changed = False
    q = np.empty(4)
    for k in range(order.size):
        if n_dist >= n_select:
            break
        c = order[k]
        if cand_score[c] < 3:
            break
        _canonical_quat(cand_r[c], sym, q)
        new = True
        for j in range(n_dist):
            if abs(q[0] * reps[j, 0] + q[1] * reps[j, 1] + q[2] * reps[j, 2] + q[3] * reps[j, 3]) >= cos_half:
                new = False
                break
        if not new:
            continue
        reps[n_dist] = q
        n_dist += 1
        e = band_evidence(filt, valid, b, cand_r[c], ref, ref_w, pc, nrows, ncols, m_ds, theta_step, rho_step, half)
        if e > best_e:
            best_e = e
            r_out[:, :] = cand_r[c]
            changed = True
    return changed


@nb.njit(cache=True, fastmath=True, nogil=True)
def _vote_block(
    filt, b_first, start, stop, valid, rho_step, pcs, nrows, ncols, m_ds, n_bands,
    pair_angle, pair_triad, pair_off, ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol,
    n_pair_bands, luts, weight_fit, n_select, refine_iter, refine_min, rref, rref_w, rref_off, quat, phase_id, fit, conf, quality, nbands_out,
):  # pragma: no cover - numba
    """Peaks, band normals, voting and phase choice for patterns ``start:stop``.

    Pattern ``start + k`` is ``filt[:, :, b_first + k]``; ``filt`` may be a
    strided view (the CuPy path hands back ``(n, n_theta, n_rho)`` transposed).
    """
    n_theta, n_rho = valid.shape
    n_phases = pair_off.size - 1
    theta_step = np.pi / n_theta
    half = (n_rho - 1) / 2.0
    n_act = stop - start
    blk_t = np.empty((n_act, n_bands))
    blk_r = np.empty((n_act, n_bands))
    blk_h = np.empty((n_act, n_bands))
    blk_n = np.empty(n_act, dtype=np.int64)
    # The block's own patterns as a (possibly strided) view: one vectorised
    # pass over the transform finds every pattern's peaks.
    find_peaks_block(filt[:, :, b_first : b_first + n_act], valid, n_act, n_bands, blk_t, blk_r, blk_h, blk_n)
    rho = np.empty(n_bands)
    theta = np.empty(n_bands)
    normals = np.empty((n_bands, 3))
    weights = np.empty(n_bands)
    r_best = np.empty((3, 3))
    r_ref = np.empty((3, 3))
    r_sel = np.empty((3, 3))
    ph_r = np.empty((n_phases, 3, 3))
    ph_cnt = np.zeros(n_phases, dtype=np.int64)
    ph_fit = np.zeros(n_phases)
    ph_conf = np.zeros(n_phases)
    cand_r = np.empty((CAND_CAP, 3, 3))
    cand_score = np.empty(CAND_CAP, dtype=np.int64)
    q = np.empty(4)
    for k in range(stop - start):
        b = b_first + k
        s = start + k
        nfound = blk_n[k]
        pk_t = blk_t[k]
        pk_r = blk_r[k]
        pk_h = blk_h[k]
        nbands_out[s] = nfound
        hsum = 0.0
        for j in range(nfound):
            hsum += pk_h[j]
            # Stronger peaks are located more precisely: weight the fit by height.
            weights[j] = pk_h[j] if weight_fit else 1.0
            theta[j] = pk_t[j] * theta_step
            rho[j] = (pk_r[j] - half) * rho_step
        quality[s] = hsum / nfound if nfound > 0 else 0.0
        pc = pcs[s] if pcs.shape[0] > 1 else pcs[0]
        band_normals(rho, theta, nfound, pc, nrows, ncols, m_ds, normals)
        best_fit = 180.0
        best_conf = 0.0
        best_phase = -1
        if nfound >= 3:
            max_cnt = 0
            for ph in range(n_phases):
                cnt, f, c, n_cand = vote_orientation(
                    normals,
                    nfound,
                    weights,
                    pair_angle[pair_off[ph] : pair_off[ph + 1]],
                    pair_triad[pair_off[ph] : pair_off[ph + 1]],
                    ref[ref_off[ph] : ref_off[ph + 1]],
                    sym[sym_off[ph] : sym_off[ph + 1]],
                    pair_tol,
                    match_tol,
                    n_pair_bands,
                    luts[ph],
                    ph_r[ph],
                    cand_r,
                    cand_score,
                )
                if cnt >= 3 and n_select > 1:
                    lo_ = ref_off[ph]
                    hi_ = ref_off[ph + 1]
                    if select_by_evidence(
                        filt, valid, b, ph_r[ph], cand_r, cand_score, n_cand, n_select,
                        sym[sym_off[ph] : sym_off[ph + 1]], ref[lo_:hi_], ref_w[lo_:hi_], pc, nrows,
                        ncols, m_ds, theta_step, rho_step, half, r_sel,
                    ):
                        refit(r_sel, normals, nfound, weights, ref[lo_:hi_], match_tol, ph_r[ph])
                        cnt, f = band_fit(ph_r[ph], normals, nfound, ref[lo_:hi_], match_tol)
                ph_cnt[ph] = cnt
                ph_fit[ph] = f
                ph_conf[ph] = c
                max_cnt = max(max_cnt, cnt)
            if max_cnt >= 3:
                # Band count decides; phases within one band of the best are
                # told apart by the Radon evidence for every band they predict
                # (see band_evidence), then by fit.
                best_ev = -1e30
                for ph in range(n_phases):
                    if ph_cnt[ph] < max(max_cnt - 1, 3):
                        continue
                    ev = 0.0
                    if n_phases > 1:
                        ev = band_evidence(
                            filt, valid, b, ph_r[ph], ref[ref_off[ph] : ref_off[ph + 1]],
                            ref_w[ref_off[ph] : ref_off[ph + 1]], pc, nrows, ncols, m_ds,
                            theta_step, rho_step, half,
                        )
                    if best_phase < 0 or ev > best_ev or (ev == best_ev and ph_fit[ph] < best_fit):
                        best_ev = ev
                        best_phase = ph
                        best_fit = ph_fit[ph]
                        best_conf = ph_conf[ph]
                if best_phase >= 0:
                    r_best[:, :] = ph_r[best_phase]
                    if refine_iter > 0:
                        lo_ = ref_off[best_phase]
                        hi_ = ref_off[best_phase + 1]
                        rl = rref_off[best_phase]
                        rh = rref_off[best_phase + 1]
                        used = guided_refine(
                            filt, valid, b, r_best, rref[rl:rh], rref_w[rl:rh], pc, nrows, ncols,
                            m_ds, rho_step, refine_min * quality[s], refine_iter, r_ref,
                        )
                        if used >= 3:
                            r_best[:, :] = r_ref
                            cnt_, best_fit = band_fit(r_best, normals, nfound, ref[lo_:hi_], match_tol)
        if best_phase >= 0:
            # Sample->crystal is the transpose of the crystal->sample hypothesis.
            matrix_to_quaternion(r_best.T, q)
            for a in range(4):
                quat[s, a] = q[a]
        else:
            quat[s, 0] = 1.0
            quat[s, 1] = 0.0
            quat[s, 2] = 0.0
            quat[s, 3] = 0.0
        phase_id[s] = best_phase
        fit[s] = best_fit
        conf[s] = best_conf


@nb.njit(cache=True, fastmath=True, nogil=True)
def _index_block(
    start, stop, pats, mask_index, bg, bg_mode, dyn_basis, dyn_pinv, lut_bin, lut_weight,
    inv_count, valid, k_rho, k_theta, rho_step, pcs, nrows, ncols, m_ds, n_bands,
    pair_angle, pair_triad, pair_off, ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol,
    n_pair_bands, luts, weight_fit, n_select, refine_iter, refine_min, rref, rref_w, rref_off, quat, phase_id, fit, conf, quality, nbands_out,
):  # pragma: no cover - numba
    # A separate function so that numba's parfor pass cannot hoist the
    # scratch allocations out of the parallel loop (they would be shared by
    # all threads).
    n_theta, n_rho = inv_count.shape
    n_mask = mask_index.size
    x = np.empty((n_mask, BLOCK), dtype=np.float32)
    rad = np.empty((n_theta, n_rho, BLOCK), dtype=np.float32)
    tmp = np.empty((n_theta, n_rho, BLOCK), dtype=np.float32)
    filt = np.empty((n_theta, n_rho, BLOCK), dtype=np.float32)
    prepare_block(pats, start, stop, mask_index, bg, bg_mode, dyn_basis, dyn_pinv, x)
    radon_block(x, lut_bin, lut_weight, inv_count, rad)
    butterfly_block(rad, k_rho, k_theta, tmp, filt)
    _vote_block(
        filt, 0, start, stop, valid, rho_step, pcs, nrows, ncols, m_ds, n_bands,
        pair_angle, pair_triad, pair_off, ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol,
        n_pair_bands, luts, weight_fit, n_select, refine_iter, refine_min, rref, rref_w, rref_off, quat, phase_id, fit, conf, quality, nbands_out,
    )


@nb.njit(cache=True, fastmath=True, parallel=True)
def index_patterns_cpu(
    pats, mask_index, bg, bg_mode, dyn_basis, dyn_pinv, lut_bin, lut_weight, inv_count, valid,
    k_rho, k_theta, rho_step, pcs, nrows, ncols, m_ds, n_bands, pair_angle, pair_triad, pair_off,
    ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol, n_pair_bands, luts, weight_fit, n_select,
    refine_iter, refine_min, rref, rref_w, rref_off, quat, phase_id, fit, conf, quality, nbands_out,
):  # pragma: no cover - numba
    """Index ``pats`` ((n, rows*cols), any real dtype) in place into the outputs.

    All phase tables are concatenated with offsets ``*_off`` (length
    ``n_phases + 1``). ``pcs`` is ``(1, 3)`` or ``(n, 3)``. Blocks of
    :data:`BLOCK` patterns run in parallel.
    """
    n = pats.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    for blk in nb.prange(n_blocks):
        start = blk * BLOCK
        stop = min(start + BLOCK, n)
        _index_block(
            start, stop, pats, mask_index, bg, bg_mode, dyn_basis, dyn_pinv, lut_bin, lut_weight,
            inv_count, valid, k_rho, k_theta, rho_step, pcs, nrows, ncols, m_ds, n_bands,
            pair_angle, pair_triad, pair_off, ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol,
            n_pair_bands, luts, weight_fit, n_select, refine_iter, refine_min, rref, rref_w, rref_off, quat, phase_id, fit, conf, quality, nbands_out,
        )


@nb.njit(cache=True, fastmath=True, parallel=True)
def index_filtered_cpu(
    filt, valid, rho_step, pcs, nrows, ncols, m_ds, n_bands, pair_angle, pair_triad, pair_off,
    ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol, n_pair_bands, luts, weight_fit, n_select,
    refine_iter, refine_min, rref, rref_w, rref_off, quat, phase_id, fit, conf, quality, nbands_out,
):  # pragma: no cover - numba
    """Peaks-to-orientations on an already filtered transform ``(n_theta, n_rho, n)``.

    Used after the CuPy image stages (:mod:`diffraflow.operators.indexing.gpu`), and by
    the tests that check those stages with NumPy in place of CuPy.
    """
    n = filt.shape[2]
    n_blocks = (n + BLOCK - 1) // BLOCK
    for blk in nb.prange(n_blocks):
        start = blk * BLOCK
        stop = min(start + BLOCK, n)
        _vote_block(
            filt, start, start, stop, valid, rho_step, pcs, nrows, ncols, m_ds, n_bands,
            pair_angle, pair_triad, pair_off, ref, ref_w, ref_off, sym, sym_off, pair_tol, match_tol,
            n_pair_bands, luts, weight_fit, n_select, refine_iter, refine_min, rref, rref_w, rref_off, quat, phase_id, fit, conf, quality, nbands_out,
        )
