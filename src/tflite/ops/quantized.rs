//! The int8 graph's operators: u8 maps in, u8 maps out, on the file's own grids.
//! `QuantizedConv` (CONV_2D: a product, after gathering windows for k×k kernels) and
//! `QuantizedAdd`. (The depthwise convolution is [`super::RequantizedDepthwise`] on byte maps.)

use tract_core::internal::*;

use super::frame_threads::split_rows;
use super::kernels::DepthwiseGeometry;
use super::qkernels::{self, AddParams, PackedWeights, Requant};

thread_local! {
    /// A k×k convolution's gathered windows, one buffer per thread running the plan.
    static GATHERED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks an NHWC u8 input's channels and returns the output fact with `out_c` channels and
/// `hw` (or the input's) spatial size.
fn nhwc_u8_fact(
    what: &str,
    x: &TypedFact,
    in_c: usize,
    out: Option<(usize, usize)>,
    out_c: usize,
) -> TractResult<TVec<TypedFact>> {
    ensure!(
        x.datum_type == u8::datum_type(),
        "{what} takes u8, got {x:?}"
    );
    ensure!(
        x.rank() == 4 && x.shape[3].to_usize().ok() == Some(in_c),
        "{what} built for {in_c} channels, got {:?}",
        x.shape
    );
    let (h, w) = match out {
        Some((h, w)) => (h.to_dim(), w.to_dim()),
        None => (x.shape[1].clone(), x.shape[2].clone()),
    };
    Ok(tvec!(u8::fact([x.shape[0].clone(), h, w, out_c.to_dim()])))
}

/// CONV_2D on u8 maps: each pixel's channels (or, for a k×k kernel, its gathered window) times
/// the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizedConv {
    pub weights: Arc<PackedWeights>,
    pub requant: Arc<Requant>,
    /// The window, for anything but a 1×1 kernel at stride 1; `channels` is the input's.
    pub window: Option<(DepthwiseGeometry, u8)>,
}

impl Op for QuantizedConv {
    fn name(&self) -> StaticName {
        "QuantizedConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels{}",
            self.weights.k,
            self.weights.n,
            if self.window.is_some() {
                ", windows gathered"
            } else {
                ""
            }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let xs = x.try_as_plain_ram()?.as_slice::<u8>()?;
        let batch = x.shape()[0];
        let (h, w) = match &self.window {
            Some((g, _)) => (g.out_h, g.out_w),
            None => (x.shape()[1], x.shape()[2]),
        };
        let pixels = batch * h * w;
        // Safety: the product writes every output byte.
        let mut y = unsafe { Tensor::uninitialized::<u8>(&[batch, h, w, self.weights.n])? };
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<u8>()?;
            match &self.window {
                Some((g, zero_point)) => GATHERED.with_borrow_mut(|buf| {
                    // Reused from frame to frame: the first layer's windows are ~340 KB, which
                    // the allocator would otherwise map and fault in afresh every frame.
                    buf.resize(pixels * self.weights.k, 0);
                    let in_len = g.in_h * g.in_w * g.channels;
                    let out_len = h * w * self.weights.k;
                    for (x, rows) in xs.chunks_exact(in_len).zip(buf.chunks_exact_mut(out_len)) {
                        qkernels::im2col(g, x, *zero_point, rows);
                    }
                    self.matmul(buf, out);
                }),
                None => self.matmul(xs, out),
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl QuantizedConv {
    /// The product of `x`'s pixels with the weights into `y`, its pixels split over the frame's
    /// threads in whole blocks of the kernels' four rows.
    fn matmul(&self, x: &[u8], y: &mut [u8]) {
        let (k, n) = (self.weights.k, self.weights.n);
        split_rows(y, n, 4, k * n, |pixels, y| {
            let x = &x[pixels.start * k..pixels.end * k];
            qkernels::matmul(x, pixels.len(), &self.weights, &self.requant, y)
        })
    }
}

impl TypedOp for QuantizedConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        match &self.window {
            Some((g, _)) => nhwc_u8_fact(
                "QuantizedConv",
                inputs[0],
                g.channels,
                Some((g.out_h, g.out_w)),
                self.weights.n,
            ),
            None => nhwc_u8_fact(
                "QuantizedConv",
                inputs[0],
                self.weights.k,
                None,
                self.weights.n,
            ),
        }
    }

    as_op!();
}

/// TFLite's 8-bit ADD of two maps on different grids, onto the output's grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizedAdd {
    pub params: AddParams,
}

impl Op for QuantizedAdd {
    fn name(&self) -> StaticName {
        "QuantizedAdd".into()
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        // Safety: `add` writes every output byte (one per input pair; the shapes are equal).
        let mut y = unsafe { Tensor::uninitialized::<u8>(a.shape())? };
        {
            let mut view = y.try_as_plain_ram_mut()?;
            qkernels::add(
                a.try_as_plain_ram()?.as_slice::<u8>()?,
                b.try_as_plain_ram()?.as_slice::<u8>()?,
                &self.params,
                view.as_slice_mut::<u8>()?,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QuantizedAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (a, b) = (inputs[0], inputs[1]);
        ensure!(
            a.datum_type == u8::datum_type() && b.datum_type == u8::datum_type(),
            "QuantizedAdd takes u8"
        );
        ensure!(
            a.shape == b.shape,
            "QuantizedAdd: shapes {a:?} and {b:?} differ"
        );
        Ok(tvec!(u8::fact(a.shape.clone())))
    }

    as_op!();
}
