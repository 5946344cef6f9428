//! PolyBench/GPU kernels, re-implemented from the suite's published
//! descriptions: two stencils and six dense linear-algebra kernels on `f64`.
//!
//! Sizing: an `n × n` matrix fills one array of `bytes` (`n = ⌊√(bytes/8)⌋`;
//! 3DCONV's `n³` cube, `n = ⌊∛(bytes/8)⌋`); vectors have `n` elements.
//! GEMM's `A` (`n × 32`) and `B` (`32 × n`) and SYR2K's `A` and `B`
//! (`n × 32`) keep the inner dimension at [`INNER`], so the work grows like
//! `bytes`, not like its 1.5th power.
//!
//! | kernel    | arrays                        | launches: one work item |
//! |-----------|-------------------------------|-------------------------|
//! | `2dconv`  | A, B (n×n)                    | 1: one row of B (3×3 stencil) |
//! | `3dconv`  | A, B (n³)                     | 1: one (i, j) row of B (3×3×3 stencil) |
//! | `gemm`    | C (n×n), A (n×32), B (32×n)   | 1: 8 rows of `C = α·A·B + β·C` |
//! | `atax`    | A, x, tmp, y                  | 2: 8 rows of `tmp = A·x`; 64 columns of `y = Aᵀ·tmp` |
//! | `bicg`    | A, r, p, s, q                 | 2: 64 columns of `s = Aᵀ·r`; 8 rows of `q = A·p` |
//! | `mvt`     | A, y1, y2, x1, x2             | 2: 8 rows of `x1 += A·y1`; 64 columns of `x2 += Aᵀ·y2` |
//! | `gesummv` | A, B (n×n), x, y              | 1: 8 rows of `y = α·A·x + β·B·x` |
//! | `syr2k`   | C (n×n), A, B (n×32)          | 1: 8 rows of the lower triangle of `C = α·A·Bᵀ + α·B·Aᵀ + β·C` |
//!
//! Each reference is a plain loop nest over CPU vectors that evaluates every
//! element with the kernel's operations in the kernel's order.

use super::*;

/// The inner dimension of GEMM and SYR2K.
pub const INNER: u64 = 32;
/// Rows one row-wise work item computes.
const ROWS: u64 = 8;
/// Columns one column-wise work item (ATAX, BICG, MVT) computes.
const COLS: u64 = 64;
const ALPHA: f64 = 1.5;
const BETA: f64 = 1.25;
/// 2DCONV weights, by row offset -1..=1, then column offset -1..=1.
const W2: [[f64; 3]; 3] = [
    [0.25, -0.5, 0.125],
    [0.5, 1.0, -0.25],
    [-0.125, 0.375, 0.75],
];
/// 3DCONV weights along the innermost axis: `W2[di][dj] · K3[dk]`.
const K3: [f64; 3] = [0.5, 1.0, -0.75];

/// The side of a square `f64` matrix of at most `b` bytes.
pub(super) fn side2(b: u64) -> u64 {
    (b / 8).isqrt().max(3)
}

/// The side of an `f64` cube of at most `b` bytes.
pub(super) fn side3(b: u64) -> u64 {
    let x = b / 8;
    let mut r = (x as f64).cbrt() as u64;
    while r > 0 && r * r * r > x {
        r -= 1;
    }
    while (r + 1) * (r + 1) * (r + 1) <= x {
        r += 1;
    }
    r.max(3)
}

pub(super) fn arrays(w: Workload, b: u64) -> Vec<u64> {
    let n = side2(b);
    let (m, v, k) = (n * n * 8, n * 8, n * INNER * 8);
    match w {
        Workload::Conv2d => vec![m, m],
        Workload::Conv3d => vec![side3(b).pow(3) * 8; 2],
        Workload::Gemm | Workload::Syr2k => vec![m, k, k],
        Workload::Atax => vec![m, v, v, v],
        Workload::Bicg | Workload::Mvt => vec![m, v, v, v, v],
        Workload::Gesummv => vec![m, m, v, v],
        _ => Vec::new(),
    }
}

/// Input value `i` of the array salted `salt`: a multiple of 1/256 in
/// [-2, 2) (exact in `f64`).
fn val(salt: u64, i: u64) -> f64 {
    (hash2(salt, i) % 1024) as f64 / 256.0 - 2.0
}

fn vals(salt: u64, n: u64) -> Vec<f64> {
    (0..n).map(|i| val(salt, i)).collect()
}

/// Rows `[lo, hi)` of item `item` of a row-wise launch over `n` rows.
fn rows(item: u64, n: u64) -> (u64, u64) {
    (item * ROWS, ((item + 1) * ROWS).min(n))
}

impl Runner<'_> {
    pub(super) fn conv2d(&mut self, b: u64) -> Result<(), RunError> {
        let n = side2(b);
        let sz = self.w.arrays(b);
        let av = vals(1, n * n);
        let a = self.input(&av, sz[0])?;
        let out = self.array(sz[1])?;
        let (pa, pb, nu) = (a.addr(), out.addr(), n as usize);
        self.launch("the 2DCONV kernel", n - 2, |lane, item| {
            let i = item + 1;
            // Rows i-1, i, i+1 are contiguous: one read.
            let mut win = vec![0f64; 3 * nu];
            lane.read_slice(pa.offset((i - 1) * n * 8), &mut win)?;
            let mut o = vec![0f64; nu - 2];
            for (j, o) in (1..nu - 1).zip(o.iter_mut()) {
                let mut s = 0.0;
                for (di, w) in W2.iter().enumerate() {
                    for (dj, c) in w.iter().enumerate() {
                        s += c * win[di * nu + j + dj - 1];
                    }
                }
                *o = s;
            }
            lane.write_slice(pb.offset((i * n + 1) * 8), &o)
        })?;
        let mut want = vec![0f64; nu * nu];
        for i in 1..nu - 1 {
            for j in 1..nu - 1 {
                let mut s = 0.0;
                for r in 0..3 {
                    for c in 0..3 {
                        s += W2[r][c] * av[(i + r - 1) * nu + (j + c - 1)];
                    }
                }
                want[i * nu + j] = s;
            }
        }
        check_array(self.w, "B", &out, &want)
    }

    pub(super) fn conv3d(&mut self, b: u64) -> Result<(), RunError> {
        let n = side3(b);
        let sz = self.w.arrays(b);
        let av = vals(2, n * n * n);
        let a = self.input(&av, sz[0])?;
        let out = self.array(sz[1])?;
        let (pa, pb, nu) = (a.addr(), out.addr(), n as usize);
        let inner = n - 2;
        self.launch("the 3DCONV kernel", inner * inner, |lane, item| {
            let (i, j) = (item / inner + 1, item % inner + 1);
            // Per plane i-1..=i+1, rows j-1..=j+1 are contiguous.
            let mut win = vec![0f64; 9 * nu];
            for di in 0..3u64 {
                let at = ((i + di - 1) * n + j - 1) * n * 8;
                let w = &mut win[di as usize * 3 * nu..(di as usize + 1) * 3 * nu];
                lane.read_slice(pa.offset(at), w)?;
            }
            let mut o = vec![0f64; nu - 2];
            for (k, o) in (1..nu - 1).zip(o.iter_mut()) {
                let mut s = 0.0;
                for (di, w) in W2.iter().enumerate() {
                    for (dj, c) in w.iter().enumerate() {
                        for (dk, kk) in K3.iter().enumerate() {
                            s += c * kk * win[(di * 3 + dj) * nu + k + dk - 1];
                        }
                    }
                }
                *o = s;
            }
            lane.write_slice(pb.offset(((i * n + j) * n + 1) * 8), &o)
        })?;
        let mut want = vec![0f64; nu * nu * nu];
        let at = |i: usize, j: usize, k: usize| (i * nu + j) * nu + k;
        for i in 1..nu - 1 {
            for j in 1..nu - 1 {
                for k in 1..nu - 1 {
                    let mut s = 0.0;
                    for di in 0..3 {
                        for dj in 0..3 {
                            for dk in 0..3 {
                                s += W2[di][dj]
                                    * K3[dk]
                                    * av[at(i + di - 1, j + dj - 1, k + dk - 1)];
                            }
                        }
                    }
                    want[at(i, j, k)] = s;
                }
            }
        }
        check_array(self.w, "B", &out, &want)
    }

    pub(super) fn gemm(&mut self, b: u64) -> Result<(), RunError> {
        let n = side2(b);
        let (nu, ku) = (n as usize, INNER as usize);
        let sz = self.w.arrays(b);
        let (cv, av, bv) = (vals(3, n * n), vals(4, n * INNER), vals(5, INNER * n));
        let c = self.input(&cv, sz[0])?;
        let a = self.input(&av, sz[1])?;
        let bm = self.input(&bv, sz[2])?;
        let (pc, pa, pb) = (c.addr(), a.addr(), bm.addr());
        self.launch("the GEMM kernel", n.div_ceil(ROWS), |lane, item| {
            let (lo, hi) = rows(item, n);
            let r = (hi - lo) as usize;
            with_scratch(ku * nu + r * ku + r * nu, |buf| {
                let buf: &mut [f64] = bytemuck::cast_slice_mut(buf);
                let (bb, rest) = buf.split_at_mut(ku * nu);
                let (aa, cc) = rest.split_at_mut(r * ku);
                lane.read_slice(pb, bb)?;
                lane.read_slice(pa.offset(lo * INNER * 8), aa)?;
                lane.read_slice(pc.offset(lo * n * 8), cc)?;
                for (crow, arow) in cc.chunks_exact_mut(nu).zip(aa.chunks_exact(ku)) {
                    crow.iter_mut().for_each(|x| *x *= BETA);
                    for (k, brow) in bb.chunks_exact(nu).enumerate() {
                        let s = ALPHA * arow[k];
                        for (x, y) in crow.iter_mut().zip(brow) {
                            *x += s * y;
                        }
                    }
                }
                lane.write_slice(pc.offset(lo * n * 8), cc)
            })
        })?;
        let mut want = vec![0f64; nu * nu];
        for i in 0..nu {
            for j in 0..nu {
                let mut x = cv[i * nu + j] * BETA;
                for k in 0..ku {
                    x += ALPHA * av[i * ku + k] * bv[k * nu + j];
                }
                want[i * nu + j] = x;
            }
        }
        check_array(self.w, "C", &c, &want)
    }

    /// Launches `y[i] = Σ_j M[i][j]·x[j]` (rows of the `n × n` matrix at `m`),
    /// 8 rows per item; `y[i]` starts from `init(i)`.
    fn row_dots(
        &mut self,
        step: &str,
        n: u64,
        m: VirtAddr,
        x: VirtAddr,
        y: VirtAddr,
        init: Option<VirtAddr>,
    ) -> Result<(), RunError> {
        let nu = n as usize;
        self.launch(step, n.div_ceil(ROWS), |lane, item| {
            let (lo, hi) = rows(item, n);
            let r = (hi - lo) as usize;
            let mut xv = vec![0f64; nu];
            let mut mv = vec![0f64; r * nu];
            let mut out = vec![0f64; r];
            lane.read_slice(x, &mut xv)?;
            lane.read_slice(m.offset(lo * n * 8), &mut mv)?;
            if let Some(init) = init {
                lane.read_slice(init.offset(lo * 8), &mut out)?;
            }
            for (o, row) in out.iter_mut().zip(mv.chunks_exact(nu)) {
                for (a, b) in row.iter().zip(&xv) {
                    *o += a * b;
                }
            }
            lane.write_slice(y.offset(lo * 8), &out)
        })
    }

    /// Launches `y[j] = Σ_i v[i]·M[i][j]` (columns of the `n × n` matrix at
    /// `m`), 64 columns per item reading 64-element row segments (the
    /// coalesced access of a GPU thread block walking columns); `y[j]`
    /// starts from `init(j)`.
    fn column_dots(
        &mut self,
        step: &str,
        n: u64,
        m: VirtAddr,
        v: VirtAddr,
        y: VirtAddr,
        init: Option<VirtAddr>,
    ) -> Result<(), RunError> {
        let nu = n as usize;
        self.launch(step, n.div_ceil(COLS), |lane, item| {
            let (lo, hi) = (item * COLS, ((item + 1) * COLS).min(n));
            let w = (hi - lo) as usize;
            let mut vv = vec![0f64; nu];
            lane.read_slice(v, &mut vv)?;
            let mut seg = vec![0f64; w];
            let mut acc = vec![0f64; w];
            if let Some(init) = init {
                lane.read_slice(init.offset(lo * 8), &mut acc)?;
            }
            for (i, vi) in vv.iter().enumerate() {
                lane.read_slice(m.offset((i as u64 * n + lo) * 8), &mut seg)?;
                for (a, s) in acc.iter_mut().zip(&seg) {
                    *a += vi * s;
                }
            }
            lane.write_slice(y.offset(lo * 8), &acc)
        })
    }

    pub(super) fn atax(&mut self, b: u64) -> Result<(), RunError> {
        let n = side2(b);
        let nu = n as usize;
        let sz = self.w.arrays(b);
        let (av, xv) = (vals(6, n * n), vals(7, n));
        let a = self.input(&av, sz[0])?;
        let x = self.input(&xv, sz[1])?;
        let tmp = self.array(sz[2])?;
        let y = self.array(sz[3])?;
        self.row_dots("the A·x kernel", n, a.addr(), x.addr(), tmp.addr(), None)?;
        self.column_dots("the Aᵀ·tmp kernel", n, a.addr(), tmp.addr(), y.addr(), None)?;
        let want_tmp: Vec<f64> = (0..nu)
            .map(|i| (0..nu).fold(0.0, |s, j| s + av[i * nu + j] * xv[j]))
            .collect();
        let want_y: Vec<f64> = (0..nu)
            .map(|j| (0..nu).fold(0.0, |s, i| s + want_tmp[i] * av[i * nu + j]))
            .collect();
        check_array(self.w, "tmp", &tmp, &want_tmp)?;
        check_array(self.w, "y", &y, &want_y)
    }

    pub(super) fn bicg(&mut self, b: u64) -> Result<(), RunError> {
        let n = side2(b);
        let nu = n as usize;
        let sz = self.w.arrays(b);
        let (av, rv, pv) = (vals(8, n * n), vals(9, n), vals(10, n));
        let a = self.input(&av, sz[0])?;
        let r = self.input(&rv, sz[1])?;
        let p = self.input(&pv, sz[2])?;
        let s = self.array(sz[3])?;
        let q = self.array(sz[4])?;
        self.column_dots("the s = Aᵀ·r kernel", n, a.addr(), r.addr(), s.addr(), None)?;
        self.row_dots("the q = A·p kernel", n, a.addr(), p.addr(), q.addr(), None)?;
        let want_s: Vec<f64> = (0..nu)
            .map(|j| (0..nu).fold(0.0, |s, i| s + rv[i] * av[i * nu + j]))
            .collect();
        let want_q: Vec<f64> = (0..nu)
            .map(|i| (0..nu).fold(0.0, |s, j| s + av[i * nu + j] * pv[j]))
            .collect();
        check_array(self.w, "s", &s, &want_s)?;
        check_array(self.w, "q", &q, &want_q)
    }

    pub(super) fn mvt(&mut self, b: u64) -> Result<(), RunError> {
        let n = side2(b);
        let nu = n as usize;
        let sz = self.w.arrays(b);
        let (av, y1v, y2v) = (vals(11, n * n), vals(12, n), vals(13, n));
        let (x1v, x2v) = (vals(14, n), vals(15, n));
        let a = self.input(&av, sz[0])?;
        let y1 = self.input(&y1v, sz[1])?;
        let y2 = self.input(&y2v, sz[2])?;
        let x1 = self.input(&x1v, sz[3])?;
        let x2 = self.input(&x2v, sz[4])?;
        let pa = a.addr();
        self.row_dots(
            "the x1 += A·y1 kernel",
            n,
            pa,
            y1.addr(),
            x1.addr(),
            Some(x1.addr()),
        )?;
        // x2[i] += Σ_j A[j][i]·y2[j]: columns, walked as a thread block
        // would, 64 adjacent columns reading one row segment at a time
        // (one strided load per column made every element its own remote
        // access, 8 bytes of a 64-byte line, where a GPU coalesces them).
        self.column_dots(
            "the x2 += Aᵀ·y2 kernel",
            n,
            pa,
            y2.addr(),
            x2.addr(),
            Some(x2.addr()),
        )?;
        let want_x1: Vec<f64> = (0..nu)
            .map(|i| (0..nu).fold(x1v[i], |s, j| s + av[i * nu + j] * y1v[j]))
            .collect();
        let want_x2: Vec<f64> = (0..nu)
            .map(|i| (0..nu).fold(x2v[i], |s, j| s + av[j * nu + i] * y2v[j]))
            .collect();
        check_array(self.w, "x1", &x1, &want_x1)?;
        check_array(self.w, "x2", &x2, &want_x2)
    }

    pub(super) fn gesummv(&mut self, b: u64) -> Result<(), RunError> {
        let n = side2(b);
        let nu = n as usize;
        let sz = self.w.arrays(b);
        let (av, bv, xv) = (vals(16, n * n), vals(17, n * n), vals(18, n));
        let a = self.input(&av, sz[0])?;
        let bm = self.input(&bv, sz[1])?;
        let x = self.input(&xv, sz[2])?;
        let y = self.array(sz[3])?;
        let (pa, pb, px, py) = (a.addr(), bm.addr(), x.addr(), y.addr());
        self.launch("the GESUMMV kernel", n.div_ceil(ROWS), |lane, item| {
            let (lo, hi) = rows(item, n);
            let r = (hi - lo) as usize;
            let mut xx = vec![0f64; nu];
            let mut aa = vec![0f64; r * nu];
            let mut bb = vec![0f64; r * nu];
            lane.read_slice(px, &mut xx)?;
            lane.read_slice(pa.offset(lo * n * 8), &mut aa)?;
            lane.read_slice(pb.offset(lo * n * 8), &mut bb)?;
            let out: Vec<f64> = aa
                .chunks_exact(nu)
                .zip(bb.chunks_exact(nu))
                .map(|(ar, br)| {
                    let (mut ta, mut tb) = (0.0, 0.0);
                    for ((a, b), x) in ar.iter().zip(br).zip(&xx) {
                        ta += a * x;
                        tb += b * x;
                    }
                    ALPHA * ta + BETA * tb
                })
                .collect();
            lane.write_slice(py.offset(lo * 8), &out)
        })?;
        let want: Vec<f64> = (0..nu)
            .map(|i| {
                let ta = (0..nu).fold(0.0, |s, j| s + av[i * nu + j] * xv[j]);
                let tb = (0..nu).fold(0.0, |s, j| s + bv[i * nu + j] * xv[j]);
                ALPHA * ta + BETA * tb
            })
            .collect();
        check_array(self.w, "y", &y, &want)
    }

    pub(super) fn syr2k(&mut self, b: u64) -> Result<(), RunError> {
        let n = side2(b);
        let (nu, ku) = (n as usize, INNER as usize);
        let sz = self.w.arrays(b);
        let (cv, av, bv) = (vals(19, n * n), vals(20, n * INNER), vals(21, n * INNER));
        let c = self.input(&cv, sz[0])?;
        let a = self.input(&av, sz[1])?;
        let bm = self.input(&bv, sz[2])?;
        let (pc, pa, pb) = (c.addr(), a.addr(), bm.addr());
        self.launch("the SYR2K kernel", n.div_ceil(ROWS), |lane, item| {
            let (lo, hi) = rows(item, n);
            let r = (hi - lo) as usize;
            // Rows 0..hi of A and B (every j ≤ i), and C's rows lo..hi.
            let ab = hi as usize * ku;
            with_scratch(2 * ab + r * nu, |buf| {
                let buf: &mut [f64] = bytemuck::cast_slice_mut(buf);
                let (aa, rest) = buf.split_at_mut(ab);
                let (bb, cc) = rest.split_at_mut(ab);
                lane.read_slice(pa, aa)?;
                lane.read_slice(pb, bb)?;
                lane.read_slice(pc.offset(lo * n * 8), cc)?;
                for (ri, crow) in cc.chunks_exact_mut(nu).enumerate() {
                    let i = lo as usize + ri;
                    let (ai, bi) = (&aa[i * ku..(i + 1) * ku], &bb[i * ku..(i + 1) * ku]);
                    for (j, x) in crow.iter_mut().enumerate().take(i + 1) {
                        let (aj, bj) = (&aa[j * ku..(j + 1) * ku], &bb[j * ku..(j + 1) * ku]);
                        let mut v = *x * BETA;
                        for k in 0..ku {
                            v += aj[k] * ALPHA * bi[k] + bj[k] * ALPHA * ai[k];
                        }
                        *x = v;
                    }
                }
                lane.write_slice(pc.offset(lo * n * 8), cc)
            })
        })?;
        let mut want = cv.clone();
        for i in 0..nu {
            for j in 0..=i {
                let mut v = cv[i * nu + j] * BETA;
                for k in 0..ku {
                    v += av[j * ku + k] * ALPHA * bv[i * ku + k]
                        + bv[j * ku + k] * ALPHA * av[i * ku + k];
                }
                want[i * nu + j] = v;
            }
        }
        check_array(self.w, "C", &c, &want)
    }
}
