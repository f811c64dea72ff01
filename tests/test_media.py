"""PyAV decoding: formats, resampling to 16 kHz / 25 fps, alignment, and clear errors on bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import pytest
from media_files import mux_audio, mux_grey_frames, tone, write_mp4, write_wav

from pipeline.media import (
    MediaError,
    centre_crop_resize,
    crop_boxes,
    decode_audio,
    decode_video,
    face_crops,
    load_audio_visual,
    probe,
    read_boxes,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real test data not found at {SHARED_DATA}")


def test_mp4_with_h264_and_aac(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "a.mp4", seconds=2.0)
    info = probe(path)
    assert (info.has_audio, info.has_video, info.audio_rate, info.audio_channels) == (True, True, 16000, 1)
    assert (info.video_codec, info.audio_codec, info.video_fps, info.width) == ("h264", "aac", 25.0, 32)
    assert info.duration == pytest.approx(2.0, abs=0.1)

    frames = decode_video(path)
    assert frames.shape == (50, 32, 32, 3) and frames.dtype == np.uint8
    assert abs(int(frames[10, 16, 16, 0]) - 80) <= 3  # frame 10 was grey level 80

    audio = decode_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 32000 <= len(audio) <= 32000 + 1024  # AAC pads its last 1024-sample frame
    assert 0.15 < np.sqrt(np.mean(audio[1000:30000] ** 2)) < 0.25  # 0.3-amplitude sine: RMS 0.21

    aligned_audio, aligned_frames = load_audio_visual(path)
    assert len(aligned_frames) == 50 and len(aligned_audio) == 640 * 50


def _write_container(path: Path, container_format: str, video_codec: str | None, audio_codec: str) -> Path:
    """2 s of 25 fps video (optional) and a 44.1 kHz tone in another container and codec pair."""
    sample_rate, seconds, fps = 44100, 2.0, 25
    with av.open(str(path), "w", format=container_format) as container:
        # Every stream must exist before the first packet is muxed (the header is written then).
        audio = container.add_stream(audio_codec, rate=sample_rate, layout="mono")
        if video_codec is not None:
            video = container.add_stream(video_codec, rate=fps)
            video.width = video.height = 32
            video.pix_fmt = "yuv420p"
        mux_audio(container, audio, tone(seconds, sample_rate), sample_rate)
        if video_codec is not None:
            mux_grey_frames(container, video, range(round(seconds * fps)), fps)
    return path


@pytest.mark.parametrize(
    ("name", "container_format", "video_codec", "audio_codec"),
    [
        ("a.flac", "flac", None, "flac"),
        ("a.m4a", "ipod", None, "aac"),
        ("v.avi", "avi", "mpeg4", "mp2"),
        ("v.mpg", "mpeg", "mpeg1video", "mp2"),
    ],
)
def test_other_containers_decode(
    tmp_path: Path, name: str, container_format: str, video_codec: str | None, audio_codec: str
) -> None:
    path = _write_container(tmp_path / name, container_format, video_codec, audio_codec)
    audio = decode_audio(path)  # 44.1 kHz in, 16 kHz out
    assert abs(len(audio) - 32000) <= 1100  # codecs pad their last frame
    if video_codec is not None:
        # The MPEG-PS muxer may leave a one-frame timestamp gap, which resampling by time fills.
        assert len(decode_video(path)) in (50, 51)
        samples, frames = load_audio_visual(path)
        assert len(samples) == 640 * len(frames)


def test_wav_48k_stereo_is_resampled_to_16k_mono(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "s.wav", seconds=1.5, sample_rate=48000, channels=2)
    info = probe(path)
    assert (info.audio_rate, info.audio_channels, info.has_video) == (48000, 2, False)
    audio = decode_audio(path)
    assert abs(len(audio) - 24000) <= 2
    assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.4


def test_30_fps_video_is_resampled_to_25_fps_by_timestamp(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "v30.mp4", seconds=2.0, fps=30, sample_rate=None)
    frames = decode_video(path, fps=25.0)
    assert len(frames) == 50
    # Output frame i shows source frame floor(i * 30 / 25) (the latest one not after i/25 s).
    for index in (0, 1, 7, 49):
        source = (index * 30) // 25
        assert abs(int(frames[index, 16, 16, 0]) - (source * 8) % 256) <= 3


def test_upsampling_fps_duplicates_frames(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "v10.mp4", seconds=1.0, fps=10, sample_rate=None)
    frames = decode_video(path, fps=25.0)
    assert len(frames) == 25
    assert np.array_equal(frames[0], frames[2]) and not np.array_equal(frames[2], frames[3])


def test_no_audio_track_raises_naming_the_file(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "silent.mp4", seconds=1.0, sample_rate=None)
    with pytest.raises(MediaError, match="no audio") as error:
        decode_audio(path)
    assert str(error.value).startswith(str(path))


def test_truncated_mp4_fails_or_decodes_shorter(tmp_path: Path) -> None:
    path = write_mp4(tmp_path / "cut.mp4", seconds=2.0)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.3)])
    # The mp4 muxer writes the index (moov) last: without it FFmpeg cannot open the file at all.
    # Should a build decode the partial data instead, the result must at least be shorter.
    try:
        frames = decode_video(path)
    except MediaError as error:
        assert str(error).startswith(str(path))
    else:
        assert len(frames) < 50


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(5000)], ids=["empty", "garbage"])
def test_unreadable_files_raise_media_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    for decode in (decode_audio, decode_video, probe):
        with pytest.raises(MediaError) as error:
            decode(path)
        assert str(error.value).startswith(str(path))


def test_wav_without_samples_is_zero_length(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)  # PCM, mono, 16 kHz, 16-bit
    path.write_bytes(b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", 0))
    with pytest.raises(MediaError, match="zero-length audio"):
        decode_audio(path)


def test_missing_file_raises_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="nope.wav"):
        decode_audio(tmp_path / "nope.wav")


def test_centre_crop_resize_takes_the_centre() -> None:
    frames = np.zeros((3, 40, 60, 3), dtype=np.uint8)
    frames[:, 10:30, 20:40] = 200  # a 20x20 bright square in the centre
    out = centre_crop_resize(frames, crop_fraction=0.5, size=16)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    assert out.min() == 200  # the crop (20x20 around the centre) is all square
    wide = centre_crop_resize(frames, crop_fraction=1.0, size=20)
    assert wide[:, 10, 10].min() == 200 and wide[:, 0, 0].max() == 0


def test_load_audio_visual_cuts_to_the_shorter_stream(tmp_path: Path) -> None:
    video = write_mp4(tmp_path / "v.mp4", seconds=2.0, sample_rate=None)
    audio = write_wav(tmp_path / "a.wav", seconds=1.23, sample_rate=16000, channels=1)
    samples, frames = load_audio_visual(video, audio)
    assert len(frames) == 30  # 1.23 s of audio holds 30 whole 40 ms frames
    assert len(samples) == 30 * 640


@needs_shared
def test_real_voxceleb_wav_keeps_its_length() -> None:
    path = SHARED_DATA / "voxceleb1" / "wav" / "id10270" / "x6uYqmx31kE" / "00001.wav"
    info = probe(path)
    assert info.audio_rate == 16000
    audio = decode_audio(path)
    assert abs(len(audio) - round(info.duration * 16000)) <= 1


@needs_shared
def test_real_ravdess_48k_wav_is_resampled() -> None:
    path = sorted((SHARED_DATA / "ravdess" / "Actor_01").glob("*.wav"))[0]
    info = probe(path)
    assert info.audio_rate == 48000
    audio = decode_audio(path)
    assert abs(len(audio) - info.duration * 16000) <= 2


@needs_shared
def test_real_mead_mp4_has_video_but_no_audio() -> None:
    path = sorted((SHARED_DATA / "mead").glob("*.mp4"))[0]
    info = probe(path)
    frames = decode_video(path)
    assert frames.shape[1:] == (256, 256, 3)
    assert abs(len(frames) - info.duration * 25) <= 1
    with pytest.raises(MediaError, match="no audio track"):
        decode_audio(path)


# ---- time ranges: seeking, then trimming by timestamp --------------------------------------------


@pytest.mark.parametrize(("start", "end"), [(0.0, 0.4), (0.72, 1.2), (1.6, 2.0), (1.4, None)])
def test_mp4_range_matches_the_whole_decode(tmp_path: Path, start: float, end: float | None) -> None:
    path = write_mp4(tmp_path / "a.mp4", seconds=2.0)
    whole = decode_video(path)
    cut = decode_video(path, start=start, end=end)
    first, last = round(start * 25), round((end or 2.0) * 25)
    assert np.array_equal(cut, whole[first:last])


def _write_noise_av(path: Path, container_format: str, video_codec: str, audio_codec: str) -> Path:
    """3 s of 25 fps frames with grey level = frame index, and 44.1 kHz white noise (not periodic, unlike a tone)."""
    sample_rate, seconds, fps = 44100, 3.0, 25
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, round(seconds * sample_rate)).astype(np.float32)
    with av.open(str(path), "w", format=container_format) as container:
        audio = container.add_stream(audio_codec, rate=sample_rate, layout="mono")
        video = container.add_stream(video_codec, rate=fps)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        mux_audio(container, audio, noise, sample_rate)
        mux_grey_frames(container, video, [2 * index for index in range(round(seconds * fps))], fps)
    return path


@pytest.mark.parametrize(
    ("name", "container_format", "video_codec", "audio_codec"),
    [("v.avi", "avi", "mpeg4", "mp2"), ("v.mpg", "mpeg", "mpeg1video", "mp2"), ("v.mp4", "mp4", "libx264", "aac")],
)
def test_range_cut_keeps_audio_and_video_aligned(
    tmp_path: Path, name: str, container_format: str, video_codec: str, audio_codec: str
) -> None:
    path = _write_noise_av(tmp_path / name, container_format, video_codec, audio_codec)
    whole_audio, whole_frames = load_audio_visual(path)
    audio, frames = load_audio_visual(path, start=1.5, end=2.1)
    assert len(frames) == 15 and len(audio) == 15 * 640
    # The frame on screen at 1.5 s is source frame 37 (grey level 74); MPEG-PS may start its video
    # a few milliseconds after its audio, which shows one frame earlier.
    assert np.array_equal(frames, whole_frames[37:52]) or np.array_equal(frames, whole_frames[36:51])
    # The cut starts where the whole decode's sample 24000 is (1.5 s at 16 kHz).
    lag = int(np.argmax(np.correlate(whole_audio[23800:25000], audio[:800], mode="valid")))
    assert abs(lag - 200) <= 16, lag  # within 1 ms


def test_range_of_a_30_fps_avi_is_resampled_by_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "v30.avi"
    with av.open(str(path), "w", format="avi") as container:
        video = container.add_stream("mpeg4", rate=30)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        # 4 s, grey level 2 * frame index, keyframes every 12 frames
        mux_grey_frames(container, video, [2 * index for index in range(120)], 30)
    with av.open(str(path)) as container:
        source = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    frames = decode_video(path, start=2.5, end=3.0)
    assert len(frames) == 13  # output times 2.5, 2.54, ..., 2.98
    for index, frame in enumerate(frames):  # the latest source frame at each output time
        assert np.array_equal(frame, source[int((2.5 + index / 25) * 30 + 1e-9)])


def test_wav_range_is_sample_exact(tmp_path: Path) -> None:
    path = tmp_path / "ramp.wav"
    ramp = (np.arange(48000 * 2) / (48000 * 2) * 0.9 * 32767).astype(np.int16)  # 2 s, 48 kHz, 0 → 0.9
    with av.open(str(path), "w", format="wav") as container:
        mux_audio(container, container.add_stream("pcm_s16le", rate=48000, layout="mono"), ramp, 48000)
    audio = decode_audio(path, start=0.5, end=1.5)
    assert len(audio) == 16000
    assert audio[100] == pytest.approx(0.9 * (0.5 + 100 / 16000) / 2, abs=2e-3)
    assert audio[-100] == pytest.approx(0.9 * (1.5 - 100 / 16000) / 2, abs=2e-3)
    assert len(decode_audio(path, start=1.5)) == 8000


def test_separate_audio_is_not_cut_unless_asked(tmp_path: Path) -> None:
    video = write_mp4(tmp_path / "v.mp4", seconds=3.0, sample_rate=None)
    sentence = write_wav(tmp_path / "turn.wav", seconds=0.8, sample_rate=16000, channels=1)
    audio, frames = load_audio_visual(video, sentence, start=1.0, end=2.0)
    assert len(frames) == 20 and len(audio) == 20 * 640  # the 0.8 s sentence bounds the 1 s cut
    assert abs(int(frames[0, 16, 16, 0]) - 200) <= 3  # frame 25
    cut_audio, _ = load_audio_visual(video, sentence, start=0.5, end=2.0, cut_audio=True)
    assert len(cut_audio) == 7 * 640  # only 0.3 s of the wav lies after 0.5 s: 7 whole 40 ms frames


@pytest.mark.parametrize(("start", "end"), [(2.5, 3.0), (1.0, 1.0), (1.0, 0.5), (-1.0, 1.0)])
def test_empty_ranges_raise_naming_the_file(tmp_path: Path, start: float, end: float) -> None:
    path = write_mp4(tmp_path / "a.mp4", seconds=2.0)
    with pytest.raises(MediaError) as error:
        load_audio_visual(path, start=start, end=end)
    assert str(error.value).startswith(str(path))


# ---- per-frame face boxes ------------------------------------------------------------------------


def test_crop_boxes_follows_a_moving_face() -> None:
    frames = np.zeros((3, 60, 80, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 25, 25], [40, 20, 60, 40], [58, 38, 78, 58]], dtype=float)
    for index, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        frames[index, y0:y1, x0:x1] = 200
    crops = crop_boxes(frames, boxes, size=16)
    assert crops.shape == (3, 16, 16, 3) and crops.min() == 200


def test_crop_boxes_squares_and_moves_boxes_inside_the_frame() -> None:
    frames = np.zeros((1, 40, 60, 3), dtype=np.uint8)
    frames[0, :20, 50:] = 255  # top-right corner patch, 10 wide and 20 high
    crops = crop_boxes(frames, np.array([[50, -5, 70, 15]], dtype=float), size=20)  # half outside
    # A 20 px square shifted inside: columns 40-60, rows 0-20; the right half is the patch.
    assert crops[0, 10, 15, 0] == 255 and crops[0, 10, 4, 0] == 0


def test_read_boxes_text_and_npy(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("# x0 y0 x1 y1\n1, 2, 11, 12\n3 4 13 14\n5 6 15 16\n")
    assert read_boxes(text, 2).tolist() == [[1, 2, 11, 12], [3, 4, 13, 14]]
    np.save(tmp_path / "b.npy", np.array([[0, 0, 8, 8]] * 4, dtype=np.float32))
    frames = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    assert face_crops(frames, 8, boxes_path=tmp_path / "b.npy").shape == (4, 8, 8, 3)
    assert face_crops(frames, 8).shape == (4, 8, 8, 3)  # centre crop without boxes


@pytest.mark.parametrize(
    ("content", "problem"),
    [("1 2 11 12\n3 4 13\n", r"a\.txt:2: expected 4 numbers"), ("1 2 11 12\n", "1 face boxes for 2 video frames"),
     ("1 2 11 12\n9 9 3 20\n", "box 1 is not x0 < x1")],
)
def test_bad_boxes_files_raise_naming_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "a.txt"
    path.write_text(content)
    with pytest.raises(MediaError, match=problem) as error:
        read_boxes(path, 2)
    assert str(error.value).startswith(str(path))
