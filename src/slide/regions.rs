//! IDC regions as polygons: the positive cells of a slide's patch grid joined into regions and
//! traced along cell edges, and the GeoJSON FeatureCollection QuPath imports as annotations.
//!
//! Vertices lie on the lattice of cell corners: vertex (c, r) is the top-left corner of cell
//! (c, r), x to the right and y down as in the image. Orientation: with the numbers taken as
//! they are (as GeoJSON does), an outer ring is counter-clockwise, a positive shoelace area, and
//! a hole is clockwise, so the files follow RFC 7946's right-hand rule (as WSInfer's tile boxes
//! do); drawn with y down, outer rings run clockwise on screen. QuPath accepts either.
//!
//! Cells joined by an edge (4-connected) are one region; cells touching only at a corner are
//! separate regions. Where two cells of one region touch at a corner with background at the
//! other two, the background on the two sides counts as separate, so the boundary there is an
//! outer ring and a hole meeting at that point (valid in JTS, QuPath's geometry library),
//! never one ring through the point twice: every ring is simple.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// One region: its outer ring and its holes, each a closed ring (first vertex = last) of
/// lattice vertices without collinear ones, and the number of cells it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polygon {
    /// Counter-clockwise (positive [`signed_area`]).
    pub outer: Vec<(u32, u32)>,
    /// Clockwise (negative [`signed_area`]).
    pub holes: Vec<Vec<(u32, u32)>>,
    /// Cells in the region: the outer ring's area less the holes'.
    pub cells: u64,
}

/// The shoelace area of a closed `ring`, in cells: positive for counter-clockwise (an outer
/// ring), negative for clockwise (a hole), with the numbers taken as they are.
pub fn signed_area(ring: &[(u32, u32)]) -> i64 {
    let twice: i64 = ring
        .windows(2)
        .map(|w| {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            x0 as i64 * y1 as i64 - x1 as i64 * y0 as i64
        })
        .sum();
    twice / 2
}

/// Moves along the lattice: east, south, west, north (y down). Turning right on screen is the
/// next one, left the one before.
const DIRS: [(i64, i64); 4] = [(1, 0), (0, 1), (-1, 0), (0, -1)];
/// The corners of a cell, clockwise on screen from the top left: the side that runs in
/// direction `d` starts at corner `d` and ends at corner `d + 1` (top side east, right side
/// south, bottom side west, left side north), so the cell is always on the right on screen.
const CORNERS: [(i64, i64); 4] = [(0, 0), (1, 0), (1, 1), (0, 1)];
/// The neighbour across each side, in the same order.
const ACROSS: [(i64, i64); 4] = [(0, -1), (1, 0), (0, 1), (-1, 0)];

/// The grid being traced.
struct Grid<'a> {
    cols: i64,
    rows: i64,
    positive: &'a [bool],
    /// Region of each cell (`u32::MAX`: not positive).
    label: Vec<u32>,
}

impl Grid<'_> {
    /// Index of cell (c, r) if it is positive.
    fn cell(&self, c: i64, r: i64) -> Option<usize> {
        if c < 0 || r < 0 || c >= self.cols || r >= self.rows {
            return None;
        }
        let i = (r * self.cols + c) as usize;
        self.positive.get(i).copied().unwrap_or(false).then_some(i)
    }

    /// The cell whose boundary side leaves vertex `v` in direction `d`, if there is one: the
    /// cell with corner `d` at `v`, positive, with no positive neighbour across that side.
    fn out_edge(&self, v: (i64, i64), d: usize) -> Option<usize> {
        let (c, r) = (v.0 - CORNERS[d].0, v.1 - CORNERS[d].1);
        let i = self.cell(c, r)?;
        self.cell(c + ACROSS[d].0, r + ACROSS[d].1)
            .is_none()
            .then_some(i)
    }
}

/// The regions of the `cols` x `rows` grid whose positive cells `positive[row * cols + col]`
/// marks (cells past its end are not positive), each traced into a [`Polygon`], in the order of
/// their first cell (row-major).
pub fn polygons(cols: u32, rows: u32, positive: &[bool]) -> Vec<Polygon> {
    let mut g = Grid {
        cols: cols as i64,
        rows: rows as i64,
        positive,
        label: Vec::new(),
    };
    let n = (cols as usize)
        .saturating_mul(rows as usize)
        .min(positive.len());
    let sizes = label_regions(&mut g, n);
    let mut out: Vec<Polygon> = sizes
        .iter()
        .map(|&cells| Polygon {
            outer: Vec::new(),
            holes: Vec::new(),
            cells,
        })
        .collect();
    // Bit d of used[i]: cell i's side d is on a ring already.
    let mut used = vec![0u8; n];
    for i in 0..n {
        if !positive[i] {
            continue;
        }
        let (c, r) = (i as i64 % g.cols, i as i64 / g.cols);
        for (d, corner) in CORNERS.iter().enumerate() {
            let start = (c + corner.0, r + corner.1);
            if used[i] & (1 << d) != 0 || g.out_edge(start, d) != Some(i) {
                continue;
            }
            let ring = trace(&g, &mut used, i, d);
            let p = &mut out[g.label[i] as usize];
            if signed_area(&ring) > 0 && p.outer.is_empty() {
                p.outer = ring;
            } else {
                p.holes.push(ring);
            }
        }
    }
    out
}

/// Labels the 4-connected regions of positive cells among the first `n` (row-major, by first
/// cell) into `g.label`; returns each region's cell count. Iterative: grids can be large.
fn label_regions(g: &mut Grid, n: usize) -> Vec<u64> {
    g.label = vec![u32::MAX; n];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..n {
        if !g.positive[start] || g.label[start] != u32::MAX {
            continue;
        }
        let id = sizes.len() as u32;
        g.label[start] = id;
        stack.push(start);
        let mut count = 0;
        while let Some(i) = stack.pop() {
            count += 1;
            let (c, r) = (i as i64 % g.cols, i as i64 / g.cols);
            for (dc, dr) in ACROSS {
                if let Some(j) = g.cell(c + dc, r + dr)
                    && g.label[j] == u32::MAX
                {
                    g.label[j] = id;
                    stack.push(j);
                }
            }
        }
        sizes.push(count);
    }
    sizes
}

/// The ring that starts with side `d` of cell `i`, marking its sides used: closed, without
/// collinear vertices.
fn trace(g: &Grid, used: &mut [u8], i: usize, d: usize) -> Vec<(u32, u32)> {
    let (mut cell, mut dir) = (i, d);
    let mut v = (
        i as i64 % g.cols + CORNERS[d].0,
        i as i64 / g.cols + CORNERS[d].1,
    );
    let mut steps: Vec<((i64, i64), usize)> = Vec::new();
    // Each side is used once, so a ring has at most 4 per cell; the bound only guards a loop.
    for _ in 0..=4 * used.len() {
        used[cell] |= 1 << dir;
        steps.push((v, dir));
        v = (v.0 + DIRS[dir].0, v.1 + DIRS[dir].1);
        let right = (dir + 1) % 4;
        let left = (dir + 3) % 4;
        let next = match (
            g.out_edge(v, right),
            g.out_edge(v, dir),
            g.out_edge(v, left),
        ) {
            // Two cells meeting at a corner: stay with this cell unless the other is in its
            // region (then the background on either side is apart: an outer ring and a hole).
            (Some(r), _, Some(l)) if g.label[r] == g.label[l] => (l, left),
            (Some(r), _, _) => (r, right),
            (None, Some(s), _) => (s, dir),
            (None, None, Some(l)) => (l, left),
            (None, None, None) => break,
        };
        (cell, dir) = next;
        if (cell, dir) == (i, d) {
            break;
        }
    }
    // Keep the corners: vertices where the direction changes.
    let mut ring: Vec<(u32, u32)> = (0..steps.len())
        .filter(|&k| steps[(k + steps.len() - 1) % steps.len()].1 != steps[k].1)
        .map(|k| (steps[k].0.0 as u32, steps[k].0.1 as u32))
        .collect();
    if let Some(&first) = ring.first() {
        ring.push(first);
    }
    ring
}

/// `polys` as a GeoJSON FeatureCollection of QuPath annotations in level-0 pixel coordinates:
/// vertex (c, r) at (origin.0 + c * cell_w, origin.1 + r * cell_h), whole numbers written as
/// integers. Each Feature has a stable UUID-like `id` (from `class_name` and its index), a
/// Polygon geometry (outer ring, then holes) and properties `objectType: "annotation"`,
/// `classification: {name, color: [r, g, b]}`, plus `extra(polygon)`'s entries (these two keys
/// stay as given here: QuPath needs them).
pub fn feature_collection(
    polys: &[Polygon],
    cell_w: f64,
    cell_h: f64,
    origin: (f64, f64),
    class_name: &str,
    color: [u8; 3],
    extra: impl Fn(&Polygon) -> Map<String, Value>,
) -> Value {
    let ring = |ring: &[(u32, u32)]| -> Value {
        ring.iter()
            .map(|&(c, r)| {
                json!([
                    number(origin.0 + c as f64 * cell_w),
                    number(origin.1 + r as f64 * cell_h)
                ])
            })
            .collect()
    };
    let features: Vec<Value> = polys
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let mut coordinates = vec![ring(&p.outer)];
            coordinates.extend(p.holes.iter().map(|h| ring(h)));
            let mut properties = extra(p);
            properties.insert("objectType".into(), json!("annotation"));
            properties.insert(
                "classification".into(),
                json!({"name": class_name, "color": color}),
            );
            json!({
                "type": "Feature",
                "id": feature_id(class_name, k),
                "geometry": {"type": "Polygon", "coordinates": coordinates},
                "properties": properties,
            })
        })
        .collect();
    json!({"type": "FeatureCollection", "features": features})
}

/// `x` as a JSON number: an integer when it is whole (and exact in f64), `null` when not finite.
fn number(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() < EXACT {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// A UUID (version 8, RFC 9562's custom kind) from `class_name` and `index`: the same for the
/// same feature on every run, as QuPath keys objects by `id`.
fn feature_id(class_name: &str, index: usize) -> String {
    let mut h = Sha256::new();
    h.update(b"idc-region\0");
    h.update(class_name.as_bytes());
    h.update(b"\0");
    h.update((index as u64).to_le_bytes());
    let mut b: [u8; 16] = h.finalize()[..16].try_into().expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0F) | 0x80;
    b[8] = (b[8] & 0x3F) | 0x80;
    let hex = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A grid from rows of text: `#` positive.
    fn grid(rows: &[&str]) -> (u32, u32, Vec<bool>) {
        let cols = rows[0].len() as u32;
        let cells = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        (cols, rows.len() as u32, cells)
    }

    fn polys_of(rows: &[&str]) -> Vec<Polygon> {
        let (c, r, cells) = grid(rows);
        let polys = polygons(c, r, &cells);
        check(c, r, &cells, &polys);
        polys
    }

    /// Everything a set of polygons must be: closed simple rings of unit-lattice corners without
    /// collinear vertices, outer counter-clockwise and holes clockwise, areas matching the cell
    /// counts, every boundary side of every positive cell on exactly one ring.
    fn check(cols: u32, rows: u32, cells: &[bool], polys: &[Polygon]) {
        let positive = cells.iter().filter(|&&b| b).count() as u64;
        assert_eq!(polys.iter().map(|p| p.cells).sum::<u64>(), positive);
        let mut sides = HashSet::new();
        for p in polys {
            assert!(signed_area(&p.outer) > 0, "{p:?}");
            let holes: i64 = p.holes.iter().map(|h| signed_area(h)).sum();
            assert!(p.holes.iter().all(|h| signed_area(h) < 0), "{p:?}");
            assert_eq!(signed_area(&p.outer) + holes, p.cells as i64, "{p:?}");
            for ring in std::iter::once(&p.outer).chain(&p.holes) {
                assert!(ring.len() >= 5 && ring.first() == ring.last(), "{ring:?}");
                let open = &ring[..ring.len() - 1];
                let distinct: HashSet<_> = open.iter().collect();
                assert_eq!(
                    distinct.len(),
                    open.len(),
                    "ring visits a vertex twice: {ring:?}"
                );
                for k in 0..open.len() {
                    let (a, b, c) = (
                        open[k],
                        open[(k + 1) % open.len()],
                        open[(k + 2) % open.len()],
                    );
                    assert!(a.0 == b.0 || a.1 == b.1, "not axis-aligned: {ring:?}");
                    let collinear = (a.0 == b.0 && b.0 == c.0) || (a.1 == b.1 && b.1 == c.1);
                    assert!(!collinear, "collinear vertex {b:?} in {ring:?}");
                    // The unit sides along this edge.
                    let (dx, dy) = (
                        (b.0 as i64 - a.0 as i64).signum(),
                        (b.1 as i64 - a.1 as i64).signum(),
                    );
                    let mut at = (a.0 as i64, a.1 as i64);
                    while at != (b.0 as i64, b.1 as i64) {
                        let next = (at.0 + dx, at.1 + dy);
                        assert!(sides.insert((at, next)), "side {at:?}->{next:?} twice");
                        at = next;
                    }
                }
            }
        }
        // Every boundary side, by the cells.
        let on = |c: i64, r: i64| {
            c >= 0
                && r >= 0
                && c < cols as i64
                && r < rows as i64
                && cells[(r * cols as i64 + c) as usize]
        };
        let mut want = 0;
        for r in 0..rows as i64 {
            for c in 0..cols as i64 {
                if on(c, r) {
                    want += ACROSS.iter().filter(|(dc, dr)| !on(c + dc, r + dr)).count();
                }
            }
        }
        assert_eq!(sides.len(), want);
    }

    #[test]
    fn single_cell() {
        let p = polys_of(&["...", ".#.", "..."]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].outer, vec![(1, 1), (2, 1), (2, 2), (1, 2), (1, 1)]);
        assert!(p[0].holes.is_empty());
        assert_eq!(p[0].cells, 1);
    }

    #[test]
    fn l_shape() {
        let p = polys_of(&["#.", "#.", "##"]);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].outer,
            vec![(0, 0), (1, 0), (1, 2), (2, 2), (2, 3), (0, 3), (0, 0)]
        );
        assert_eq!(p[0].cells, 4);
    }

    #[test]
    fn ring_with_a_hole() {
        let p = polys_of(&["####", "#..#", "####"]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].holes.len(), 1);
        assert_eq!(signed_area(&p[0].outer), 12);
        assert_eq!(signed_area(&p[0].holes[0]), -2);
        assert_eq!(p[0].cells, 10);
    }

    #[test]
    fn diagonal_cells_are_separate_regions() {
        for rows in [&["#.", ".#"], &[".#", "#."]] {
            let p = polys_of(rows);
            assert_eq!(p.len(), 2);
            assert!(
                p.iter()
                    .all(|p| p.cells == 1 && p.outer.len() == 5 && p.holes.is_empty())
            );
        }
    }

    #[test]
    fn a_region_pinched_at_a_corner_is_a_shell_and_a_touching_hole() {
        // The background inside touches the outside only at the corner (1, 1).
        let p = polys_of(&[".##", "#.#", "###"]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].cells, 7);
        assert_eq!(p[0].holes.len(), 1);
        assert_eq!(signed_area(&p[0].outer), 8);
        assert!(p[0].outer.contains(&(1, 1)) && p[0].holes[0].contains(&(1, 1)));
        // The mirror image, and a pinch whose background is outside on both sides.
        polys_of(&["##.", "#.#", "###"]);
        let two = polys_of(&["##.", "#.#", ".##"]);
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn checkerboard_is_one_polygon_per_cell() {
        let rows = ["#.#.#", ".#.#.", "#.#.#", ".#.#."];
        let p = polys_of(&rows);
        assert_eq!(p.len(), 10);
        assert!(p.iter().all(|p| p.cells == 1 && p.holes.is_empty()));
        assert!(polygons(0, 0, &[]).is_empty());
        // A short cell list: the rest is not positive.
        assert_eq!(polygons(3, 3, &[true]).len(), 1);
    }

    #[test]
    fn random_grids_trace_exactly() {
        // A seeded LCG: grids of every density, small enough for corners and pinches to abound.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u32
        };
        for k in 0..3000 {
            let (cols, rows) = (1 + next() % 14, 1 + next() % 14);
            let density = (k % 9 + 1) as u32 * 10;
            let cells: Vec<bool> = (0..cols * rows).map(|_| next() % 100 < density).collect();
            check(cols, rows, &cells, &polygons(cols, rows, &cells));
        }
    }

    #[test]
    fn feature_collection_is_qupath_geojson() {
        let p = polys_of(&["##", "#."]);
        let extra = |p: &Polygon| {
            let mut m = Map::new();
            m.insert("cells".into(), json!(p.cells));
            m.insert("objectType".into(), json!("detection"));
            m
        };
        let fc = feature_collection(&p, 224.0, 112.5, (1000.0, 0.0), "IDC", [200, 0, 0], extra);
        assert_eq!(fc["type"], "FeatureCollection");
        let f = &fc["features"][0];
        assert_eq!(f["type"], "Feature");
        assert_eq!(f["geometry"]["type"], "Polygon");
        assert_eq!(
            f["geometry"]["coordinates"],
            json!([[
                [1000, 0],
                [1448, 0],
                [1448, 112.5],
                [1224, 112.5],
                [1224, 225],
                [1000, 225],
                [1000, 0]
            ]])
        );
        assert_eq!(
            f["properties"],
            json!({"objectType": "annotation", "classification": {"name": "IDC", "color": [200, 0, 0]}, "cells": 3})
        );
        let id = f["id"].as_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8");
        assert_eq!(id, feature_id("IDC", 0));
        assert_ne!(id, feature_id("IDC", 1));
        // A hole is the second ring.
        let ring = polys_of(&["###", "#.#", "###"]);
        let fc = feature_collection(&ring, 1.0, 1.0, (0.0, 0.0), "IDC", [0, 0, 0], |_| {
            Map::new()
        });
        assert_eq!(
            fc["features"][0]["geometry"]["coordinates"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
