"""`prepare --faces detect`: the face is found where it is (synthetic faces with known boxes, real CREMA-D and GRID
clips), the speaker's track is chosen and smoothed, clips without a face follow --on-error, and the boxes stage 0
writes repeat the run through --boxes-dir."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from media_files import write_mp4

from pipeline import config as config_io
from pipeline.datasets.synthetic.face import render_talking_face, sample_face
from pipeline.face_store import open_faces
from pipeline.manifest import read_manifest
from pipeline.media import MediaError, decode_video
from pipeline.media.detect import (
    DETECTOR,
    NoFaceError,
    Track,
    box_iou,
    detect_faces,
    link_tracks,
    speaker_boxes,
    track_boxes,
)
from stages import prepare

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real test data not found at {SHARED_DATA}")
CREMAD = SHARED_DATA / "av" / "cremad"
GRID = SHARED_DATA / "av" / "grid"
# The face in the middle frame of 1001_DFA_ANG_XX.flv (480×360), labelled by hand: forehead to chin, ear to ear.
CREMAD_ANG_FACE = np.array([160.0, 60.0, 275.0, 205.0])


def _synthetic_clip(seed: int, n_frames: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic talking face (128 px scene) placed off-centre in a 320×240 grey frame, and its true boxes."""
    face = sample_face(np.random.default_rng([7, seed]))
    opening = np.abs(np.sin(np.arange(n_frames) / 3))
    scene, truth = render_talking_face(face, opening, np.random.default_rng([7, seed, 1]),
                                       np.random.default_rng([7, seed, 2]), 128, 25, 0.02)
    frames = np.full((n_frames, 240, 320, 3), 90, np.uint8)
    frames[:, 80:208, 170:298] = scene
    return frames, truth + [170, 80, 170, 80]


def test_synthetic_faces_are_found_where_they_are_drawn() -> None:
    found_clips, ious, frame_hits, frames_searched = 0, [], 0, 0
    clips = 24
    for seed in range(clips):
        frames, truth = _synthetic_clip(seed)
        for index in range(0, len(frames), 5):
            detections = detect_faces(frames[index])
            frames_searched += 1
            frame_hits += bool(len(detections)) and box_iou(detections, truth[index]).max() >= 0.5
        try:
            faces, crops = speaker_boxes(frames, source=f"synthetic {seed}")
        except NoFaceError:
            continue
        found_clips += 1
        ious.append(box_iou(faces, truth).mean())
        centres = (crops[:, :2] + crops[:, 2:]) / 2
        assert ((centres >= truth[:, :2]) & (centres <= truth[:, 2:])).all()  # the crop is about the face
        assert np.allclose(crops[:, 2] - crops[:, 0], crops[:, 3] - crops[:, 1])  # square
    print(f"synthetic faces: found in {found_clips}/{clips} clips, {frame_hits}/{frames_searched} searched frames; "
          f"mean IoU with the drawn face {np.mean(ious):.3f} (min {np.min(ious):.3f})")
    # OpenCV's cascade is trained on real faces: it finds about half of these drawn ones, and those well
    assert found_clips >= 8 and np.mean(ious) >= 0.6 and min(ious) >= 0.5


def test_the_speaker_is_the_persistent_face_not_a_larger_flash() -> None:
    speaker = np.array([[100.0, 50.0, 160.0, 110.0]])
    flash = np.array([[0.0, 0.0, 120.0, 120.0]])  # larger, but in one frame only
    detections = {frame: speaker + [frame, 0, frame, 0] for frame in range(0, 50, 5)}
    detections[20] = np.concatenate([detections[20], flash])
    tracks = link_tracks(detections)
    assert len(tracks) == 2
    chosen = max(tracks, key=lambda track: track.strength)
    assert chosen.frames == list(range(0, 50, 5))


def test_track_boxes_interpolate_and_ignore_one_bad_detection() -> None:
    boxes = [np.array([x, 0.0, x + 50, 50.0]) for x in (0.0, 10.0, 200.0, 30.0, 40.0)]  # frame 10 jumps away
    track = Track([0, 5, 10, 15, 20], boxes)
    every = track_boxes(track, 25)
    assert every.shape == (25, 4)
    assert every[10, 0] == pytest.approx(30.0)  # median of (10, 200, 30): the jump is ignored
    assert every[7, 0] == pytest.approx(10.0 + 2 / 5 * 20.0)  # between the smoothed 10 and 30
    assert (every[20:, 0] == every[20, 0]).all()  # held after the last detection


def test_a_clip_without_a_face_is_a_named_error() -> None:
    frames = np.full((30, 120, 160, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match=r"blank\.mp4: a face was found in 0 of 6 sampled frames"):
        speaker_boxes(frames, source="blank.mp4")


@needs_shared
def test_the_cremad_face_is_found_not_the_green_screen() -> None:
    frames = decode_video(CREMAD / "1001_DFA_ANG_XX.flv", fps=25)
    faces, crops = speaker_boxes(frames, source="cremad")
    middle = len(frames) // 2
    assert box_iou(faces[middle], CREMAD_ANG_FACE) >= 0.6
    height, width = frames.shape[1:3]
    side = crops[middle, 2] - crops[middle, 0]
    assert side < 0.5 * height  # a face-sized square, not the frame
    x0, y0, x1, y1 = faces[middle].round().astype(int)
    pixels = frames[middle].astype(int)
    green = (pixels[..., 1] > pixels[..., 0] + 40) & (pixels[..., 1] > pixels[..., 2] + 40)
    assert green.mean() > 0.6 and green[y0:y1, x0:x1].mean() < 0.3  # the screen is green, the face box is not


@needs_shared
@pytest.mark.parametrize("speaker", ["M030", "W009", "W011"])
def test_mead_faces_fill_most_of_the_frame(speaker: str) -> None:
    clip = sorted((SHARED_DATA / "mead").glob(f"{speaker}_front_*.mp4"))[0]
    frames = decode_video(clip, fps=25)
    faces, crops = speaker_boxes(frames, source=clip.name)
    sides = faces[:, 2] - faces[:, 0]
    assert (sides > 0.5 * frames.shape[2]).all()  # MEAD is framed on the face: a big box, found throughout
    assert (crops >= 0).all() and (crops[:, 2:] <= frames.shape[2]).all()


def _av_root(root: Path, with_faceless: bool) -> Path:
    """Real CREMA-D and GRID clips in the VoxCeleb layout (speaker/video/clip.mp4, linked, not copied): PyAV reads
    a file by its content, so the FLV and MPEG-1 clips decode under the .mp4 name."""
    for speaker, clips in (("cremad1001", sorted(CREMAD.glob("*.flv"))[:2]), ("grid", sorted(GRID.glob("*.mpg"))[:1])):
        for clip in clips:
            link = root / "mp4" / speaker / "v1" / f"{clip.stem}.mp4"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(clip)
    if with_faceless:
        write_mp4(root / "mp4" / "blank" / "v1" / "00001.mp4", 2.0, size=(160, 120), grey=128)  # decodes, no face
    return root


def _prepare(root: Path, run_dir: Path, **settings) -> Path:
    return prepare.run(config_io.build(prepare.PrepareConfig, {
        "root": root, "run_dir": run_dir, "split": "70-10-20", "num_workers": 0, **settings}))


@needs_shared
@pytest.mark.slow
def test_stage0_detects_skips_faceless_clips_and_repeats_with_the_boxes_it_wrote(tmp_path: Path) -> None:
    root = _av_root(tmp_path / "av", with_faceless=True)
    with pytest.raises(MediaError, match=r"blank/v1/00001\.mp4: a face was found in 0 of"):
        _prepare(root, tmp_path / "stopped", faces="detect")

    prepared = _prepare(root, tmp_path / "detected", faces="detect", on_error="skip")
    skipped = (prepared / "skipped.tsv").read_text().splitlines()
    assert len(skipped) == 2 and skipped[1].startswith("blank/v1/00001\t") and "a face was found in 0" in skipped[1]
    keys = [entry.key for entry in read_manifest(prepared)]
    assert len(keys) == 3 and "blank/v1/00001" not in keys
    with open_faces(prepared / "faces.zarr") as faces:
        assert faces.attrs["crop"].startswith(f"detect {DETECTOR}")
        crops = {key: faces.read(key) for key in keys}
    for key in keys:
        boxes = np.load(prepared / "boxes" / f"{key}.npy")
        assert boxes.shape == (len(crops[key]), 4)
    sheet = matplotlib.image.imread(prepared / prepare.CONTACT_SHEET)
    assert sheet.ndim == 3 and sheet.shape[0] > 100  # a picture with a row per class

    again = _prepare(_av_root(tmp_path / "av-again", with_faceless=False), tmp_path / "again", faces="boxes",
                     boxes_dir=prepared / "boxes")
    with open_faces(again / "faces.zarr") as faces:
        for key in keys:
            np.testing.assert_array_equal(faces.read(key), crops[key])


def test_face_options_are_checked(tmp_path: Path) -> None:
    boxes = config_io.build(prepare.PrepareConfig, {"root": tmp_path, "faces": "boxes"})
    assert prepare.resolve_boxes_dir(boxes).boxes_dir == tmp_path / "boxes"  # the default, recorded in config.toml
    given = config_io.build(prepare.PrepareConfig, {"root": tmp_path, "faces": "boxes", "boxes_dir": tmp_path / "b"})
    assert prepare.resolve_boxes_dir(given) == given
    with pytest.raises(config_io.ConfigError, match="boxes-dir"):
        config_io.build(prepare.PrepareConfig, {"root": tmp_path, "faces": "detect", "boxes_dir": tmp_path})
    with pytest.raises(config_io.ConfigError, match="faces"):
        config_io.build(prepare.PrepareConfig, {"root": tmp_path, "faces": "mtcnn"})
    assert config_io.build(prepare.PrepareConfig, {"root": tmp_path, "boxes_dir": tmp_path}).face_settings.mode == "boxes"
