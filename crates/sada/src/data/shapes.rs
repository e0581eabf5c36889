//! A procedural captioned image set: simple shapes in named colours, sizes and positions on
//! named backgrounds, e.g. "a small red star at the top left on a blue background". Every scene
//! is a pure function of (seed, index), so the set is identical on every machine, and its
//! captions are checkable: [`border_colour`] recovers the background a generated image shows.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::image::RgbImage;

/// The palette: name and sRGB value.
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [240, 220, 40]),
    ("purple", [140, 60, 180]),
    ("orange", [245, 140, 30]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
];

/// The kind of shape a scene draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A filled disc.
    Circle,
    /// A filled square.
    Square,
    /// A filled triangle, apex up.
    Triangle,
    /// A five-pointed star.
    Star,
    /// A ring (a disc with a hole).
    Ring,
    /// A plus sign.
    Cross,
}

/// Every shape, in the order scenes draw from.
pub const SHAPES: [Shape; 6] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star, Shape::Ring, Shape::Cross];

impl Shape {
    /// The shape's word in captions.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Ring => "ring",
            Shape::Cross => "cross",
        }
    }

    /// Whether (x, y) in the shape's own box [-1, 1]^2 (y down) is inside it.
    fn contains(self, x: f32, y: f32) -> bool {
        let r = (x * x + y * y).sqrt();
        match self {
            Shape::Circle => r <= 1.0,
            Shape::Square => x.abs().max(y.abs()) <= 0.85,
            // apex up at y = -0.95, base at y = 0.85
            Shape::Triangle => y <= 0.85 && x.abs() <= (y + 0.95) / 1.8,
            Shape::Star => {
                let theta = y.atan2(x) + std::f32::consts::FRAC_PI_2;
                r <= 0.45 + 0.55 * (2.5 * theta).cos().abs().powi(3)
            }
            Shape::Ring => (0.55..=1.0).contains(&r),
            Shape::Cross => (x.abs() <= 0.3 && y.abs() <= 1.0) || (y.abs() <= 0.3 && x.abs() <= 1.0),
        }
    }
}

/// How large a scene's shape is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// About a third of the image side across.
    Small,
    /// Over half the image side across.
    Large,
}

/// Where in the image a scene's shape sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// In the top-left corner.
    TopLeft,
    /// In the top-right corner.
    TopRight,
    /// In the bottom-left corner.
    BottomLeft,
    /// In the bottom-right corner.
    BottomRight,
    /// In the middle.
    Center,
}

/// Every position, in the order scenes draw from.
pub const POSITIONS: [Position; 5] = [Position::TopLeft, Position::TopRight, Position::BottomLeft, Position::BottomRight, Position::Center];

impl Position {
    /// The position's words in captions, e.g. "at the top left".
    pub fn phrase(self) -> &'static str {
        match self {
            Position::TopLeft => "at the top left",
            Position::TopRight => "at the top right",
            Position::BottomLeft => "at the bottom left",
            Position::BottomRight => "at the bottom right",
            Position::Center => "in the center",
        }
    }
}

/// One captioned scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scene {
    /// What is drawn.
    pub shape: Shape,
    /// The shape's colour: an index into [`COLOURS`].
    pub colour: usize,
    /// How large the shape is drawn.
    pub size: Size,
    /// Where the shape is drawn.
    pub position: Position,
    /// The background colour: an index into [`COLOURS`], never equal to `colour`.
    pub background: usize,
}

impl Scene {
    /// Scene `index` of the set drawn from `seed` (shape colour never equals the background).
    pub fn nth(seed: u64, index: u64) -> Scene {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let background = rng.gen_range(0..COLOURS.len());
        let colour = (background + rng.gen_range(1..COLOURS.len())) % COLOURS.len();
        Scene {
            shape: SHAPES[rng.gen_range(0..SHAPES.len())],
            colour,
            size: if rng.gen_bool(0.5) { Size::Small } else { Size::Large },
            position: POSITIONS[rng.gen_range(0..POSITIONS.len())],
            background,
        }
    }

    /// Every distinct scene (3,360: background x colour x shape x size x position), in a fixed
    /// order. A scene is a pure function of its caption, so this is also every caption.
    pub fn all() -> Vec<Scene> {
        let mut scenes = Vec::new();
        for background in 0..COLOURS.len() {
            for colour in (0..COLOURS.len()).filter(|&c| c != background) {
                for shape in SHAPES {
                    for size in [Size::Small, Size::Large] {
                        for position in POSITIONS {
                            scenes.push(Scene { shape, colour, size, position, background });
                        }
                    }
                }
            }
        }
        scenes
    }

    /// Whether the caption belongs to the held-out tenth that training never sees (FNV-1a hash
    /// of the caption, so the split is stable across machines and languages: the training
    /// script reads the split from the exported file, it does not recompute it).
    pub fn is_held_out(&self) -> bool {
        let hash = self.caption().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
        hash % 10 == 0
    }

    /// The scene's caption, e.g. "a small red star at the top left on a blue background".
    pub fn caption(&self) -> String {
        let bg = COLOURS[self.background].0;
        let article = if bg.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        format!(
            "a {} {} {} {} on {article} {bg} background",
            match self.size {
                Size::Small => "small",
                Size::Large => "large",
            },
            COLOURS[self.colour].0,
            self.shape.name(),
            self.position.phrase(),
        )
    }

    /// Centre and half-extent of the shape's box, as fractions of the image side.
    fn placement(&self) -> (f32, f32, f32) {
        let half = match self.size {
            Size::Small => 0.16,
            Size::Large => 0.28,
        };
        let (lo, hi) = (0.04 + half, 0.96 - half);
        let (cx, cy) = match self.position {
            Position::TopLeft => (lo, lo),
            Position::TopRight => (hi, lo),
            Position::BottomLeft => (lo, hi),
            Position::BottomRight => (hi, hi),
            Position::Center => (0.5, 0.5),
        };
        (cx, cy, half)
    }

    /// The fraction of each pixel the shape covers at `side x side` (4 x 4 supersampling),
    /// row-major.
    pub fn coverage(&self, side: usize) -> Vec<f32> {
        let (cx, cy, half) = self.placement();
        let ss = 4;
        let mut out = Vec::with_capacity(side * side);
        for py in 0..side {
            for px in 0..side {
                let mut hits = 0;
                for sy in 0..ss {
                    for sx in 0..ss {
                        let u = (px as f32 + (sx as f32 + 0.5) / ss as f32) / side as f32;
                        let v = (py as f32 + (sy as f32 + 0.5) / ss as f32) / side as f32;
                        if self.shape.contains((u - cx) / half, (v - cy) / half) {
                            hits += 1;
                        }
                    }
                }
                out.push(hits as f32 / (ss * ss) as f32);
            }
        }
        out
    }

    /// Render at `side x side` pixels with 4 x 4 supersampling (soft, anti-aliased edges).
    pub fn render(&self, side: usize) -> RgbImage {
        let (fg, bg) = (COLOURS[self.colour].1, COLOURS[self.background].1);
        let mut pixels = Vec::with_capacity(side * side * 3);
        for a in self.coverage(side) {
            for c in 0..3 {
                pixels.push((fg[c] as f32 * a + bg[c] as f32 * (1.0 - a)).round() as u8);
            }
        }
        RgbImage { width: side, height: side, pixels }
    }

    /// The shape's outline as an edge detector would draw it: white where a pixel is at least
    /// half covered and a 4-neighbour (or the image edge) is not, black elsewhere. It carries
    /// the shape, size and position, and nothing of the colours: the control image of the
    /// embedded ControlNet.
    pub fn outline(&self, side: usize) -> RgbImage {
        let inside = self.region(side);
        let at = |x: isize, y: isize| x >= 0 && y >= 0 && (x as usize) < side && (y as usize) < side && inside[y as usize * side + x as usize];
        let mut pixels = Vec::with_capacity(side * side * 3);
        for y in 0..side as isize {
            for x in 0..side as isize {
                let edge = at(x, y) && !(at(x - 1, y) && at(x + 1, y) && at(x, y - 1) && at(x, y + 1));
                pixels.extend_from_slice(&[if edge { 255 } else { 0 }; 3]);
            }
        }
        RgbImage { width: side, height: side, pixels }
    }
}

/// The pixels of `img` whose nearest palette colour is not its border's: the drawn shape,
/// row-major.
pub fn foreground(img: &RgbImage) -> Vec<bool> {
    let bg = border_colour(img);
    img.pixels.chunks_exact(3).map(|p| nearest_colour([p[0] as f32, p[1] as f32, p[2] as f32]) != bg).collect()
}

/// Intersection over union of two masks (1 when both are empty).
pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

impl Scene {
    /// The same scene with the shape two positions further along `POSITIONS` (always
    /// elsewhere): a control outline that disagrees with the caption.
    pub fn moved(&self) -> Scene {
        let k = POSITIONS.iter().position(|p| *p == self.position).unwrap_or(0);
        Scene { position: POSITIONS[(k + 2) % POSITIONS.len()], ..*self }
    }

    /// The pixels the shape covers at least half of: the region its outline encloses.
    pub fn region(&self, side: usize) -> Vec<bool> {
        self.coverage(side).iter().map(|&a| a >= 0.5).collect()
    }
}

/// The palette entry nearest (in RGB) to a colour.
pub fn nearest_colour(rgb: [f32; 3]) -> usize {
    let d = |c: [u8; 3]| (0..3).map(|i| (rgb[i] - c[i] as f32).powi(2)).sum::<f32>();
    (0..COLOURS.len()).min_by(|&a, &b| d(COLOURS[a].1).total_cmp(&d(COLOURS[b].1))).unwrap_or(0)
}

/// The palette colour of an image's one-pixel border (its mean): the background a caption names.
pub fn border_colour(img: &RgbImage) -> usize {
    let (w, h) = (img.width, img.height);
    let mut sum = [0f32; 3];
    let mut n = 0f32;
    for y in 0..h {
        for x in 0..w {
            if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
                for (c, s) in sum.iter_mut().enumerate() {
                    *s += img.pixels[(y * w + x) * 3 + c] as f32;
                }
                n += 1.0;
            }
        }
    }
    nearest_colour([sum[0] / n, sum[1] / n, sum[2] / n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_varied() {
        let a: Vec<Scene> = (0..200).map(|i| Scene::nth(7, i)).collect();
        let b: Vec<Scene> = (0..200).map(|i| Scene::nth(7, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a, (0..200).map(|i| Scene::nth(8, i)).collect::<Vec<_>>());
        for s in SHAPES {
            assert!(a.iter().any(|x| x.shape == s), "{s:?} never drawn");
        }
        assert!(a.iter().all(|s| s.colour != s.background));
    }

    #[test]
    fn every_caption_once_and_a_tenth_held_out_across_all_backgrounds() {
        let all = Scene::all();
        assert_eq!(all.len(), 8 * 7 * 6 * 2 * 5);
        let captions: std::collections::HashSet<String> = all.iter().map(|s| s.caption()).collect();
        assert_eq!(captions.len(), all.len());
        let held: Vec<&Scene> = all.iter().filter(|s| s.is_held_out()).collect();
        assert!((250..450).contains(&held.len()), "{} held out", held.len());
        for b in 0..COLOURS.len() {
            assert!(held.iter().filter(|s| s.background == b).count() >= 15, "background {b}");
        }
    }

    #[test]
    fn outline_rings_the_region_and_foreground_finds_the_rendered_shape() {
        let s = Scene { shape: Shape::Square, colour: 0, size: Size::Large, position: Position::Center, background: 2 };
        let (region, outline) = (s.region(32), s.outline(32));
        let edge: Vec<bool> = outline.pixels.chunks(3).map(|p| p[0] == 255).collect();
        assert!(outline.pixels.chunks(3).all(|p| p == [0, 0, 0] || p == [255, 255, 255]));
        // every edge pixel is inside; the interior is not edge; an edge exists
        assert!(edge.iter().zip(&region).all(|(e, r)| !e || *r));
        assert!(edge.iter().filter(|e| **e).count() > 20);
        assert!(!edge[16 * 32 + 16] && region[16 * 32 + 16]);
        assert!(iou(&foreground(&s.render(32)), &region) > 0.9);
        let other = Scene { position: Position::TopLeft, size: Size::Small, ..s };
        assert!(iou(&other.region(32), &region) < 0.3);
        assert_eq!(iou(&[false; 4], &[false; 4]), 1.0);
    }

    #[test]
    fn caption_names_every_attribute() {
        let s = Scene { shape: Shape::Star, colour: 0, size: Size::Small, position: Position::TopLeft, background: 2 };
        assert_eq!(s.caption(), "a small red star at the top left on a blue background");
        let o = Scene { background: 5, shape: Shape::Ring, size: Size::Large, position: Position::Center, ..s };
        assert_eq!(o.caption(), "a large red ring in the center on an orange background");
    }

    #[test]
    fn rendered_border_shows_the_background_and_the_shape_sits_where_captioned() {
        for i in 0..100 {
            let s = Scene::nth(1, i);
            let img = s.render(32);
            assert_eq!(border_colour(&img), s.background, "{}", s.caption());
            let (cx, cy, _) = s.placement();
            let (x, y) = ((cx * 32.0) as usize, (cy * 32.0) as usize);
            // the ring is hollow; every other shape covers its centre
            if s.shape != Shape::Ring {
                let p = &img.pixels[(y * 32 + x) * 3..][..3];
                assert_eq!(nearest_colour([p[0] as f32, p[1] as f32, p[2] as f32]), s.colour, "{}", s.caption());
            }
        }
    }
}
