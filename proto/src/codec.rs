//! The protobuf codec of every generated client and server: prost's, with small
//! starting buffers.
//!
//! tonic's default codec gives each call an 8 KiB encode buffer and each decoded body an
//! 8 KiB decode buffer, while a `Get` and its answer are a few hundred bytes. The agent
//! wipes every block it frees (its allocator is `WipeOnFree`), so it zeroed 24 KiB per
//! `Get`, a fifth of the instructions it spent on one (callgrind: 82 000, 66 000 with
//! these buffers). That is instructions and transient memory, not latency: a read's time
//! here is the kernel's wake-ups (bench/README.md, findings). The buffers grow to fit a
//! larger message (a snapshot of many PEM keys) as tonic reserves what each message
//! needs, so only the starting size changes.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Where each call's encode and decode buffers start: a `Get` answer for one secret with
/// a few fields fits without growing.
pub const START_BUFFER_BYTES: usize = 1024;

/// How much a streaming call encodes before it yields to the runtime: tonic's default.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`] with buffers starting at [`START_BUFFER_BYTES`]; the generated code
/// names it (`codec_path`) for every method.
#[derive(Debug, Clone, Copy)]
pub struct AgentCodec<T, U> {
    messages: PhantomData<(T, U)>,
}

impl<T, U> Default for AgentCodec<T, U> {
    fn default() -> Self {
        Self {
            messages: PhantomData,
        }
    }
}

/// The buffer settings of every encoder and decoder [`AgentCodec`] makes.
pub fn buffer_settings() -> BufferSettings {
    BufferSettings::new(START_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for AgentCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}
