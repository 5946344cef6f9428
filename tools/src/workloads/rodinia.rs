//! Rodinia kernels, re-implemented from the suite's published descriptions.
//!
//! The kernels that need a device-wide barrier between passes (time steps,
//! pyramids, levels, wavefronts) run as one persistent launch
//! ([`svmem::DeviceHandle::launch_steps`]), a step per pass.
//!
//! | kernel       | arrays (sizing from `bytes`)                     | steps: one work item |
//! |--------------|--------------------------------------------------|----------------------|
//! | `hotspot`    | temp, power, out: `f64` n×n, `n = ⌊√(bytes/8)⌋`  | [`HOTSPOT_STEPS`], ping-ponging temp and out: 8 rows of one step of the thermal update |
//! | `pathfinder` | wall: `u64` 64 × `bytes/512`; src, dst rows       | one per [`PYRAMID`] rows: a 2048-column tile, computed with a halo of one column per row so that a tile needs no neighbour's result |
//! | `bfs`        | offsets (n+1), edges (`u32`), cost, flag; `n = bytes/8` nodes | one per BFS level: 4096 nodes; a frontier node's neighbours are gathered and claimed by compare-exchange |
//! | `nw`         | score, reference: `i32` n×n, `n = ⌊√(bytes/4)⌋`   | one per anti-diagonal of 64×64 blocks: one block, row by row (its left column is a strided load) |
//! | `nn`         | records (`f32` lat, lng), dist (`f32`), best; `n = bytes/8` records | (one launch) 8192 records' distances, and their nearest into `best` by atomic min |
//!
//! The BFS graph: node `v` has `1 + h(v) mod 8` edges (4.5 on average): to
//! `v + 1` (a ring, so every node is reached) and to pseudo-random nodes.

use super::*;

/// hotspot's time steps.
pub const HOTSPOT_STEPS: u64 = 4;
/// pathfinder's rows (its columns grow with `bytes`).
pub const PATHFINDER_ROWS: u64 = 64;
/// pathfinder's rows per launch.
pub const PYRAMID: u64 = 8;
const PATHFINDER_TILE: u64 = 2048;
const BFS_CHUNK: u64 = 4096;
const UNVISITED: u64 = u64::MAX;
const NW_BLOCK: u64 = 64;
const NW_PENALTY: i32 = 10;
const NN_CHUNK: u64 = 8192;
/// The point `nn` measures distances from.
const NN_TARGET: (f32, f32) = (30.0, 90.0);

// Hotspot's per-step constants: step/capacitance and the three conductances
// (the published kernel derives them from chip dimensions; fixed here).
const HS_SDC: f64 = 0.003;
const HS_RX1: f64 = 0.1;
const HS_RY1: f64 = 0.1;
const HS_RZ1: f64 = 0.0125;
const HS_AMBIENT: f64 = 80.0;

fn pf_cols(b: u64) -> u64 {
    (b / 8 / PATHFINDER_ROWS).max(1)
}

fn nw_side(b: u64) -> u64 {
    (b / 4).isqrt().max(2)
}

fn bfs_degree(v: u64) -> u64 {
    1 + hash2(0xb5, v) % 8
}

fn bfs_edge(v: u64, k: u64, n: u64) -> u32 {
    let u = if k == 0 {
        (v + 1) % n
    } else {
        hash2(0xb6, v * 8 + k) % n
    };
    u as u32
}

pub(super) fn arrays(w: Workload, b: u64) -> Vec<u64> {
    match w {
        Workload::Hotspot => {
            let n = super::polybench::side2(b);
            vec![n * n * 8; 3]
        }
        Workload::Pathfinder => {
            let c = pf_cols(b);
            vec![PATHFINDER_ROWS * c * 8, c * 8, c * 8]
        }
        Workload::Bfs => {
            let n = b / 8;
            let edges: u64 = (0..n).map(bfs_degree).sum();
            vec![(n + 1) * 8, edges * 4, n * 8, 8]
        }
        Workload::Nw => {
            let n = nw_side(b);
            vec![n * n * 4; 2]
        }
        Workload::Nn => {
            let n = b / 8;
            vec![n * 8, n * 4, 8]
        }
        _ => Vec::new(),
    }
}

/// One hotspot update of cell `t` from its four neighbours and its power.
#[allow(clippy::too_many_arguments)]
fn hotspot_cell(t: f64, north: f64, south: f64, east: f64, west: f64, p: f64) -> f64 {
    t + HS_SDC
        * (p + (south + north - 2.0 * t) * HS_RY1
            + (east + west - 2.0 * t) * HS_RX1
            + (HS_AMBIENT - t) * HS_RZ1)
}

/// The nw substitution score of residues `a` and `b` (0..24).
fn nw_sub(a: u8, b: u8) -> i32 {
    if a == b {
        4 + i32::from(a % 7)
    } else {
        -1 - i32::from((a * 7 + b * 3) % 5)
    }
}

fn nn_record(i: u64) -> [f32; 2] {
    let lat = (hash2(0x11, i) % 18_000) as f32 / 100.0 - 90.0;
    let lng = (hash2(0x12, i) % 36_000) as f32 / 100.0 - 180.0;
    [lat, lng]
}

fn nn_dist(r: [f32; 2]) -> f32 {
    let (dx, dy) = (r[0] - NN_TARGET.0, r[1] - NN_TARGET.1);
    (dx * dx + dy * dy).sqrt()
}

/// `best`'s key: the distance's bits (ordered like the distance, which is
/// not negative) above the record's index.
fn nn_key(d: f32, i: u64) -> u64 {
    (u64::from(d.to_bits()) << 32) | i
}

impl Runner<'_> {
    pub(super) fn hotspot(&mut self, b: u64) -> Result<(), RunError> {
        let n = super::polybench::side2(b);
        let nu = n as usize;
        let sz = self.w.arrays(b);
        let t0: Vec<f64> = (0..n * n)
            .map(|i| 320.0 + (hash2(0x21, i) % 512) as f64 / 64.0)
            .collect();
        let pw: Vec<f64> = (0..n * n)
            .map(|i| (hash2(0x22, i) % 256) as f64 / 1024.0)
            .collect();
        let temp = self.input(&t0, sz[0])?;
        let power = self.input(&pw, sz[1])?;
        let out = self.array(sz[2])?;
        let pp = power.addr();
        let (pt, po) = (temp.addr(), out.addr());
        let rows = n.div_ceil(8);
        self.launch_steps(
            "the hotspot kernel",
            rows,
            |lane, step, item| {
                let (src, dst) = if step % 2 == 0 { (pt, po) } else { (po, pt) };
                let (lo, hi) = (item * 8, ((item + 1) * 8).min(n));
                // Rows lo-1..hi+1 (clamped) of temp, rows lo..hi of power.
                let (wlo, whi) = (lo.saturating_sub(1), (hi + 1).min(n));
                let mut t = vec![0f64; ((whi - wlo) * n) as usize];
                let mut p = vec![0f64; ((hi - lo) * n) as usize];
                lane.read_slice(src.offset(wlo * n * 8), &mut t)?;
                lane.read_slice(pp.offset(lo * n * 8), &mut p)?;
                let row = |i: u64| ((i - wlo) * n) as usize;
                let mut o = vec![0f64; p.len()];
                for i in lo..hi {
                    let (up, me, down) =
                        (row(i.saturating_sub(1)), row(i), row((i + 1).min(n - 1)));
                    for j in 0..nu {
                        let (w, e) = (j.saturating_sub(1), (j + 1).min(nu - 1));
                        o[((i - lo) as usize) * nu + j] = hotspot_cell(
                            t[me + j],
                            t[up + j],
                            t[down + j],
                            t[me + e],
                            t[me + w],
                            p[((i - lo) as usize) * nu + j],
                        );
                    }
                }
                lane.write_slice(dst.offset(lo * n * 8), &o)
            },
            |_, step| Ok((step + 1 < HOTSPOT_STEPS).then_some(rows)),
        )?;
        let mut cur = t0;
        let mut next = vec![0f64; nu * nu];
        for _ in 0..HOTSPOT_STEPS {
            for i in 0..nu {
                for j in 0..nu {
                    let n_ = if i > 0 {
                        cur[(i - 1) * nu + j]
                    } else {
                        cur[i * nu + j]
                    };
                    let s_ = if i + 1 < nu {
                        cur[(i + 1) * nu + j]
                    } else {
                        cur[i * nu + j]
                    };
                    let w_ = if j > 0 {
                        cur[i * nu + j - 1]
                    } else {
                        cur[i * nu + j]
                    };
                    let e_ = if j + 1 < nu {
                        cur[i * nu + j + 1]
                    } else {
                        cur[i * nu + j]
                    };
                    next[i * nu + j] =
                        hotspot_cell(cur[i * nu + j], n_, s_, e_, w_, pw[i * nu + j]);
                }
            }
            std::mem::swap(&mut cur, &mut next);
        }
        let result = if HOTSPOT_STEPS % 2 == 0 { &temp } else { &out };
        check_array(self.w, "temp", result, &cur)
    }

    pub(super) fn pathfinder(&mut self, b: u64) -> Result<(), RunError> {
        let (rows, c) = (PATHFINDER_ROWS, pf_cols(b));
        let sz = self.w.arrays(b);
        let wall: Vec<u64> = (0..rows * c).map(|i| hash2(0x31, i) % 10).collect();
        let pw = self.input(&wall, sz[0])?;
        let src = self.input(&wall[..c as usize], sz[1])?;
        let dst = self.array(sz[2])?;
        let pwall = pw.addr();
        let (ps, pd) = (src.addr(), dst.addr());
        let tiles = c.div_ceil(PATHFINDER_TILE);
        // Launch step k computes rows k·PYRAMID+1 ..= (k+1)·PYRAMID.
        let launches = (rows - 1).div_ceil(PYRAMID);
        self.launch_steps(
            "the pathfinder kernel",
            tiles,
            |lane, k, item| {
                let (s_, d_) = if k % 2 == 0 { (ps, pd) } else { (pd, ps) };
                let r0 = k * PYRAMID;
                let steps = PYRAMID.min(rows - 1 - r0);
                let (lo, hi) = (
                    item * PATHFINDER_TILE,
                    ((item + 1) * PATHFINDER_TILE).min(c),
                );
                let (elo, ehi) = (lo.saturating_sub(steps), (hi + steps).min(c));
                let w = (ehi - elo) as usize;
                let mut cur = vec![0u64; w];
                let mut next = vec![0u64; w];
                let mut wl = vec![0u64; w];
                lane.read_slice(s_.offset(elo * 8), &mut cur)?;
                for s in 0..steps {
                    let r = r0 + 1 + s;
                    lane.read_slice(pwall.offset((r * c + elo) * 8), &mut wl)?;
                    for x in 0..w {
                        let m = cur[x.saturating_sub(1)]
                            .min(cur[x])
                            .min(cur[(x + 1).min(w - 1)]);
                        next[x] = wl[x] + m;
                    }
                    std::mem::swap(&mut cur, &mut next);
                }
                let keep = &cur[(lo - elo) as usize..(hi - elo) as usize];
                lane.write_slice(d_.offset(lo * 8), keep)
            },
            |_, k| Ok((k + 1 < launches).then_some(tiles)),
        )?;
        let cu = c as usize;
        let mut cur = wall[..cu].to_vec();
        for r in 1..rows as usize {
            let prev = cur.clone();
            for j in 0..cu {
                let mut m = prev[j];
                if j > 0 {
                    m = m.min(prev[j - 1]);
                }
                if j + 1 < cu {
                    m = m.min(prev[j + 1]);
                }
                cur[j] = wall[r * cu + j] + m;
            }
        }
        let result = if launches % 2 == 0 { &src } else { &dst };
        check_array(self.w, "result", result, &cur)
    }

    pub(super) fn bfs(&mut self, b: u64) -> Result<(), RunError> {
        let n = b / 8;
        let sz = self.w.arrays(b);
        let mut offsets = Vec::with_capacity(n as usize + 1);
        let mut edges: Vec<u32> = Vec::with_capacity((sz[1] / 4) as usize);
        for v in 0..n {
            offsets.push(edges.len() as u64);
            edges.extend((0..bfs_degree(v)).map(|k| bfs_edge(v, k, n)));
        }
        offsets.push(edges.len() as u64);
        let mut cost0 = vec![UNVISITED; n as usize];
        cost0[0] = 0;
        let off = self.input(&offsets, sz[0])?;
        let ed = self.input(&edges, sz[1])?;
        let cost = self.input(&cost0, sz[2])?;
        let flag = self.input(&[0u64], sz[3])?;
        let (po, pe, pc, pf) = (off.addr(), ed.addr(), cost.addr(), flag.addr());
        let chunks = n.div_ceil(BFS_CHUNK);
        // Step `level` expands the nodes at that level; it raises `flag` to
        // level + 1 if it claimed any node, else the search is over.
        self.launch_steps(
            "the BFS kernel",
            chunks,
            |lane, level, item| {
                let (lo, hi) = (item * BFS_CHUNK, ((item + 1) * BFS_CHUNK).min(n));
                let mut c = vec![0u64; (hi - lo) as usize];
                lane.read_slice(pc.offset(lo * 8), &mut c)?;
                if !c.contains(&level) {
                    return Ok(());
                }
                let mut o = vec![0u64; c.len() + 1];
                lane.read_slice(po.offset(lo * 8), &mut o)?;
                let mut e = vec![0u32; (o[c.len()] - o[0]) as usize];
                lane.read_slice(pe.offset(o[0] * 4), &mut e)?;
                // Every neighbour of the chunk's frontier, gathered at once,
                // in address order and once each: a gather that walks
                // blocks in order holds each block's guard once.
                let mut nbrs: Vec<u64> = Vec::new();
                for (k, _) in c.iter().enumerate().filter(|(_, &x)| x == level) {
                    let (a, z) = ((o[k] - o[0]) as usize, (o[k + 1] - o[0]) as usize);
                    nbrs.extend(e[a..z].iter().map(|&u| u64::from(u)));
                }
                nbrs.sort_unstable();
                nbrs.dedup();
                let mut nc = vec![0u64; nbrs.len()];
                lane.gather(pc, &nbrs, &mut nc)?;
                let mut claimed = false;
                for (&u, _) in nbrs.iter().zip(&nc).filter(|(_, &x)| x == UNVISITED) {
                    let won = lane.compare_exchange_u64(pc.offset(u * 8), UNVISITED, level + 1)?;
                    claimed |= won.is_ok();
                }
                if claimed {
                    lane.atomic_max_u64(pf, level + 1)?;
                }
                Ok(())
            },
            |lane, level| {
                let reached: u64 = lane.load(pf)?;
                Ok((reached == level + 1 && level < n).then_some(chunks))
            },
        )?;
        let mut want = vec![UNVISITED; n as usize];
        want[0] = 0;
        let mut queue = std::collections::VecDeque::from([0u64]);
        while let Some(v) = queue.pop_front() {
            for &u in &edges[offsets[v as usize] as usize..offsets[v as usize + 1] as usize] {
                if want[u as usize] == UNVISITED {
                    want[u as usize] = want[v as usize] + 1;
                    queue.push_back(u64::from(u));
                }
            }
        }
        check_array(self.w, "cost", &cost, &want)
    }

    pub(super) fn nw(&mut self, b: u64) -> Result<(), RunError> {
        let n = nw_side(b);
        let nu = n as usize;
        let sz = self.w.arrays(b);
        let s1: Vec<u8> = (0..n).map(|i| (hash2(0x41, i) % 24) as u8).collect();
        let s2: Vec<u8> = (0..n).map(|j| (hash2(0x42, j) % 24) as u8).collect();
        let mut refm = vec![0i32; nu * nu];
        let mut score0 = vec![0i32; nu * nu];
        for i in 1..nu {
            for j in 1..nu {
                refm[i * nu + j] = nw_sub(s1[i], s2[j]);
            }
        }
        for k in 0..nu {
            score0[k] = -(k as i32) * NW_PENALTY;
            score0[k * nu] = -(k as i32) * NW_PENALTY;
        }
        let score = self.input(&score0, sz[0])?;
        let reference = self.input(&refm, sz[1])?;
        let (ps, pr) = (score.addr(), reference.addr());
        let nb = (n - 1).div_ceil(NW_BLOCK);
        // Anti-diagonal d of blocks: rows of blocks first..=last.
        let diag = move |d: u64| (d.saturating_sub(nb - 1), d.min(nb - 1));
        let blocks = move |d: u64| {
            let (first, last) = diag(d);
            last - first + 1
        };
        self.launch_steps(
            "the nw wavefront kernel",
            blocks(0),
            |lane, d, item| {
                let (first, _) = diag(d);
                let (bi, bj) = (first + item, d - first - item);
                let (r0, c0) = (1 + bi * NW_BLOCK, 1 + bj * NW_BLOCK);
                let (r1, c1) = ((r0 + NW_BLOCK).min(n), (c0 + NW_BLOCK).min(n));
                let (h, w) = ((r1 - r0) as usize, (c1 - c0) as usize);
                let mut prev = vec![0i32; w + 1];
                lane.read_slice(ps.offset(((r0 - 1) * n + c0 - 1) * 4), &mut prev)?;
                let mut left = vec![0i32; h];
                lane.load_strided(ps.offset((r0 * n + c0 - 1) * 4), n * 4, &mut left)?;
                let mut rf = vec![0i32; w];
                let mut cur = vec![0i32; w + 1];
                for (ri, l) in left.iter().enumerate() {
                    let r = r0 + ri as u64;
                    lane.read_slice(pr.offset((r * n + c0) * 4), &mut rf)?;
                    cur[0] = *l;
                    for x in 1..=w {
                        cur[x] = (prev[x - 1] + rf[x - 1])
                            .max(cur[x - 1] - NW_PENALTY)
                            .max(prev[x] - NW_PENALTY);
                    }
                    lane.write_slice(ps.offset((r * n + c0) * 4), &cur[1..])?;
                    std::mem::swap(&mut prev, &mut cur);
                }
                Ok(())
            },
            |_, d| Ok((d + 1 < 2 * nb - 1).then(|| blocks(d + 1))),
        )?;
        let mut want = score0;
        for i in 1..nu {
            for j in 1..nu {
                let diag = want[(i - 1) * nu + j - 1] + refm[i * nu + j];
                let up = want[(i - 1) * nu + j] - NW_PENALTY;
                let lft = want[i * nu + j - 1] - NW_PENALTY;
                want[i * nu + j] = diag.max(up).max(lft);
            }
        }
        check_array(self.w, "score", &score, &want)
    }

    pub(super) fn nn(&mut self, b: u64) -> Result<(), RunError> {
        let n = b / 8;
        let sz = self.w.arrays(b);
        let recs: Vec<[f32; 2]> = (0..n).map(nn_record).collect();
        let records = self.input(&recs, sz[0])?;
        let dist = self.array(sz[1])?;
        let best = self.input(&[u64::MAX], sz[2])?;
        let (pr, pd, pb) = (records.addr(), dist.addr(), best.addr());
        self.launch("the nn kernel", n.div_ceil(NN_CHUNK), |lane, item| {
            let (lo, hi) = (item * NN_CHUNK, ((item + 1) * NN_CHUNK).min(n));
            let mut r = vec![[0f32; 2]; (hi - lo) as usize];
            lane.read_slice(pr.offset(lo * 8), &mut r)?;
            let d: Vec<f32> = r.iter().map(|&x| nn_dist(x)).collect();
            lane.write_slice(pd.offset(lo * 4), &d)?;
            let key = d
                .iter()
                .enumerate()
                .map(|(k, &x)| nn_key(x, lo + k as u64))
                .min()
                .unwrap_or(u64::MAX);
            lane.atomic_min_u64(pb, key).map(|_| ())
        })?;
        let want: Vec<f32> = recs.iter().map(|&r| nn_dist(r)).collect();
        check_array(self.w, "dist", &dist, &want)?;
        let nearest = (0..n)
            .map(|i| nn_key(want[i as usize], i))
            .min()
            .unwrap_or(u64::MAX);
        check_array(self.w, "best", &best, &[nearest])
    }
}
