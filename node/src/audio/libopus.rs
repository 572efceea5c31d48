//! A small safe layer over libopus 1.6 (`opusic-sys`, built from the bundled source with the
//! deep PLC, DRED and OSCE models compiled in): the encoder, the decoder and the DRED parser,
//! with only the controls the voice path uses.
//!
//! Every libopus state is a heap block owned by one value and freed on drop; none is shared
//! between threads, so the types are `Send` but not `Sync`. Lengths are checked here, so the
//! callers cannot hand libopus a buffer shorter than the size they pass.

use opusic_sys as sys;
use std::ffi::{c_int, CStr};
use std::ptr::NonNull;

/// A libopus error code and its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("libopus: {} ({code})", strerror(*.code))]
pub struct OpusError {
    pub code: i32,
}

fn strerror(code: i32) -> String {
    // SAFETY: opus_strerror returns a pointer to a static NUL-terminated string for any code.
    let text = unsafe { CStr::from_ptr(sys::opus_strerror(code)) };
    text.to_string_lossy().into_owned()
}

fn check(code: c_int) -> Result<c_int, OpusError> {
    if code < 0 {
        Err(OpusError { code })
    } else {
        Ok(code)
    }
}

/// A state libopus created, checked: its error code, then the pointer.
fn created<T>(state: *mut T, error: c_int) -> Result<NonNull<T>, OpusError> {
    check(error)?;
    NonNull::new(state).ok_or(OpusError {
        code: sys::OPUS_ALLOC_FAIL,
    })
}

/// A length or offset as libopus's `int`, or `code` when it does not fit.
fn arg(n: usize, code: c_int) -> Result<i32, OpusError> {
    i32::try_from(n).map_err(|_| OpusError { code })
}

/// libopus's version string, e.g. "libopus 1.6.1".
pub fn version() -> String {
    // SAFETY: a static NUL-terminated string.
    let text = unsafe { CStr::from_ptr(sys::opus_get_version_string()) };
    text.to_string_lossy().into_owned()
}

/// Whether `packet` carries LBRR (in-band FEC) data for the frame before it.
pub fn has_lbrr(packet: &[u8]) -> bool {
    let Ok(len) = i32::try_from(packet.len()) else {
        return false;
    };
    // SAFETY: `packet` holds `len` bytes; malformed packets return a negative code.
    unsafe { sys::opus_packet_has_lbrr(packet.as_ptr(), len) > 0 }
}

/// The audio bandwidth limits the voice path sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bandwidth {
    Wideband,
    Fullband,
}

/// A mono VOIP encoder at 48 kHz.
pub struct Encoder {
    state: NonNull<sys::OpusEncoder>,
}

// SAFETY: the encoder state is plain memory owned by this value; libopus keeps no thread-local
// or global reference to it.
unsafe impl Send for Encoder {}

impl Encoder {
    pub fn new(sample_rate: u32) -> Result<Self, OpusError> {
        let mut error = 0;
        // SAFETY: valid arguments; the result is checked for null and the error code.
        let state = unsafe {
            sys::opus_encoder_create(
                sample_rate as i32,
                1,
                sys::OPUS_APPLICATION_VOIP,
                &mut error,
            )
        };
        let mut encoder = Self {
            state: created(state, error)?,
        };
        encoder.set(sys::OPUS_SET_SIGNAL_REQUEST, sys::OPUS_SIGNAL_VOICE)?;
        Ok(encoder)
    }

    fn set(&mut self, request: c_int, value: i32) -> Result<(), OpusError> {
        // SAFETY: every SET request the voice path makes takes one opus_int32 argument.
        check(unsafe { sys::opus_encoder_ctl(self.state.as_ptr(), request, value) }).map(drop)
    }

    fn get(&mut self, request: c_int) -> Result<i32, OpusError> {
        let mut value: i32 = 0;
        // SAFETY: every GET request the voice path makes writes one opus_int32.
        check(unsafe {
            sys::opus_encoder_ctl(self.state.as_ptr(), request, &mut value as *mut i32)
        })?;
        Ok(value)
    }

    pub fn set_bitrate(&mut self, bits_per_second: u32) -> Result<(), OpusError> {
        self.set(sys::OPUS_SET_BITRATE_REQUEST, bits_per_second as i32)
    }

    pub fn set_inband_fec(&mut self, on: bool) -> Result<(), OpusError> {
        self.set(sys::OPUS_SET_INBAND_FEC_REQUEST, i32::from(on))
    }

    pub fn set_dtx(&mut self, on: bool) -> Result<(), OpusError> {
        self.set(sys::OPUS_SET_DTX_REQUEST, i32::from(on))
    }

    pub fn set_complexity(&mut self, complexity: u8) -> Result<(), OpusError> {
        self.set(sys::OPUS_SET_COMPLEXITY_REQUEST, i32::from(complexity))
    }

    pub fn set_max_bandwidth(&mut self, bandwidth: Bandwidth) -> Result<(), OpusError> {
        let value = match bandwidth {
            Bandwidth::Wideband => sys::OPUS_BANDWIDTH_WIDEBAND,
            Bandwidth::Fullband => sys::OPUS_BANDWIDTH_FULLBAND,
        };
        self.set(sys::OPUS_SET_MAX_BANDWIDTH_REQUEST, value)
    }

    pub fn set_packet_loss_perc(&mut self, pct: u8) -> Result<(), OpusError> {
        self.set(
            sys::OPUS_SET_PACKET_LOSS_PERC_REQUEST,
            i32::from(pct.min(100)),
        )
    }

    /// How much history (in 10 ms units, at most 104) each packet carries as DRED.
    pub fn set_dred_duration(&mut self, units_10ms: u8) -> Result<(), OpusError> {
        self.set(
            sys::OPUS_SET_DRED_DURATION_REQUEST,
            i32::from(units_10ms.min(104)),
        )
    }

    pub fn lookahead(&mut self) -> Result<usize, OpusError> {
        Ok(usize::try_from(self.get(sys::OPUS_GET_LOOKAHEAD_REQUEST)?).unwrap_or(0))
    }

    /// Encodes one frame of mono samples into `out`; returns the packet length.
    pub fn encode_float(&mut self, pcm: &[f32], out: &mut [u8]) -> Result<usize, OpusError> {
        let frame = arg(pcm.len(), sys::OPUS_BAD_ARG)?;
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: `pcm` holds `frame` samples (mono) and `out` at least `max` bytes.
        let n = check(unsafe {
            sys::opus_encode_float(
                self.state.as_ptr(),
                pcm.as_ptr(),
                frame,
                out.as_mut_ptr(),
                max,
            )
        })?;
        Ok(n as usize)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create and freed once.
        unsafe { sys::opus_encoder_destroy(self.state.as_ptr()) }
    }
}

/// A mono decoder at 48 kHz.
pub struct Decoder {
    state: NonNull<sys::OpusDecoder>,
}

// SAFETY: as for `Encoder`.
unsafe impl Send for Decoder {}

impl Decoder {
    pub fn new(sample_rate: u32) -> Result<Self, OpusError> {
        let mut error = 0;
        // SAFETY: valid arguments; the result is checked.
        let state = unsafe { sys::opus_decoder_create(sample_rate as i32, 1, &mut error) };
        Ok(Self {
            state: created(state, error)?,
        })
    }

    /// 0–10. From 5 the decoder conceals with the deep PLC model; from 6 it enhances SILK
    /// speech with LACE, from 7 with NoLACE (OSCE).
    pub fn set_complexity(&mut self, complexity: u8) -> Result<(), OpusError> {
        // SAFETY: OPUS_SET_COMPLEXITY takes one opus_int32.
        check(unsafe {
            sys::opus_decoder_ctl(
                self.state.as_ptr(),
                sys::OPUS_SET_COMPLEXITY_REQUEST,
                i32::from(complexity.min(10)),
            )
        })
        .map(drop)
    }

    /// Samples (at the decoder's rate) in `packet`, or an error for a malformed packet.
    pub fn samples_in(&self, packet: &[u8]) -> Result<usize, OpusError> {
        let len = arg(packet.len(), sys::OPUS_INVALID_PACKET)?;
        if len == 0 {
            return Err(OpusError {
                code: sys::OPUS_INVALID_PACKET,
            });
        }
        // SAFETY: `packet` holds `len` bytes; the decoder state is valid.
        let n = check(unsafe {
            sys::opus_decoder_get_nb_samples(self.state.as_ptr(), packet.as_ptr(), len)
        })?;
        Ok(n as usize)
    }

    /// Decodes `packet` (or, with `fec`, the frame before it from its LBRR; or, when empty,
    /// conceals) into `out`, whose length is the frame size asked for.
    pub fn decode_float(
        &mut self,
        packet: &[u8],
        out: &mut [f32],
        fec: bool,
    ) -> Result<usize, OpusError> {
        let len = arg(packet.len(), sys::OPUS_INVALID_PACKET)?;
        let frame = arg(out.len(), sys::OPUS_BAD_ARG)?;
        let data = if packet.is_empty() {
            std::ptr::null()
        } else {
            packet.as_ptr()
        };
        // SAFETY: `data` is null (conceal) or `len` readable bytes; `out` holds `frame` samples.
        let n = check(unsafe {
            sys::opus_decode_float(
                self.state.as_ptr(),
                data,
                len,
                out.as_mut_ptr(),
                frame,
                c_int::from(fec),
            )
        })?;
        Ok(n as usize)
    }

    /// Decodes the audio `offset` samples before the start of the packet `dred` was parsed
    /// from, into `out`.
    pub fn decode_dred(
        &mut self,
        dred: &Dred,
        offset: usize,
        out: &mut [f32],
    ) -> Result<usize, OpusError> {
        let frame = arg(out.len(), sys::OPUS_BAD_ARG)?;
        let offset = arg(offset, sys::OPUS_BAD_ARG)?;
        // SAFETY: `dred` holds a processed DRED state; `out` holds `frame` samples.
        let n = check(unsafe {
            sys::opus_decoder_dred_decode_float(
                self.state.as_ptr(),
                dred.state.as_ptr(),
                offset,
                out.as_mut_ptr(),
                frame,
            )
        })?;
        Ok(n as usize)
    }

    pub fn reset(&mut self) -> Result<(), OpusError> {
        // SAFETY: OPUS_RESET_STATE takes no argument.
        check(unsafe { sys::opus_decoder_ctl(self.state.as_ptr(), sys::OPUS_RESET_STATE) })
            .map(drop)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create and freed once.
        unsafe { sys::opus_decoder_destroy(self.state.as_ptr()) }
    }
}

/// The DRED parser (its own model state) and the redundancy last parsed from a packet.
pub struct Dred {
    decoder: NonNull<sys::OpusDREDDecoder>,
    state: NonNull<sys::OpusDRED>,
    /// Samples of history (at 48 kHz) before the parsed packet that the redundancy covers.
    covers: usize,
}

// SAFETY: as for `Encoder`.
unsafe impl Send for Dred {}

impl Dred {
    pub fn new() -> Result<Self, OpusError> {
        let mut error = 0;
        // SAFETY: the results are checked for null and the error code.
        let decoder = created(unsafe { sys::opus_dred_decoder_create(&mut error) }, error)?;
        // SAFETY: as above.
        let state = match created(unsafe { sys::opus_dred_alloc(&mut error) }, error) {
            Ok(state) => state,
            Err(e) => {
                // SAFETY: created above, freed once.
                unsafe { sys::opus_dred_decoder_destroy(decoder.as_ptr()) };
                return Err(e);
            }
        };
        Ok(Self {
            decoder,
            state,
            covers: 0,
        })
    }

    /// Parses the redundancy in `packet`, up to `max_samples` of history at 48 kHz. Returns
    /// how many samples before the packet it covers (0 when it carries none).
    pub fn parse(&mut self, packet: &[u8], max_samples: usize) -> Result<usize, OpusError> {
        self.covers = 0;
        let len = arg(packet.len(), sys::OPUS_INVALID_PACKET)?;
        let mut end: c_int = 0;
        // SAFETY: `packet` holds `len` bytes; both states are valid.
        let offset = check(unsafe {
            sys::opus_dred_parse(
                self.decoder.as_ptr(),
                self.state.as_ptr(),
                packet.as_ptr(),
                len,
                i32::try_from(max_samples).unwrap_or(i32::MAX),
                48_000,
                &mut end,
                0,
            )
        })?;
        // The return value is how far back (in samples before the packet) the redundancy
        // reaches; `end` counts samples at the newest end that it codes as silence.
        self.covers = usize::try_from(offset).unwrap_or(0);
        Ok(self.covers)
    }

    /// What the last `parse` found: samples of history before that packet.
    pub fn covers(&self) -> usize {
        self.covers
    }
}

impl Drop for Dred {
    fn drop(&mut self) {
        // SAFETY: both created in `new` and freed once.
        unsafe {
            sys::opus_dred_free(self.state.as_ptr());
            sys::opus_dred_decoder_destroy(self.decoder.as_ptr());
        }
    }
}
