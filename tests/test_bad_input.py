"""Messy input: every kind of bad file or line gets an error naming the file (and line) and the problem,
and stage 0 stops at the first bad utterance or, with on_error=skip, records it and stores nothing of it."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import av
import pytest
from media_files import write_mp4, write_wav
from test_iemocap import HEADER, block, write_session

from cache.store import open_store
from pipeline.datasets.base import DatasetError
from pipeline.datasets.iemocap import Iemocap, read_emo_evaluation
from pipeline.datasets.ravdess import Ravdess, parse_filename
from pipeline.datasets.voxceleb import VoxCeleb
from pipeline.media import MediaError, decode_audio, load_audio_visual

# ---- media files -------------------------------------------------------------------------------


def _zero_packet_mp4(path: Path) -> Path:
    """An mp4 whose streams never received a packet."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        container.add_stream("aac", rate=16000, layout="mono")
        for packet in video.encode(None):
            container.mux(packet)
    return path


def _header_only_wav(path: Path) -> Path:
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", 0))
    return path


def _truncated(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


BAD_MEDIA = {
    "corrupt": (lambda d: _written(d / "garbage.mp4", bytes(range(256)) * 20), "cannot open"),
    "zero-bytes": (lambda d: _written(d / "empty.mp4", b""), "cannot open"),
    "truncated": (lambda d: _truncated(write_mp4(d / "cut.mp4", 2.0), 0.5), "cannot open"),  # mp4 index is last
    "no-audio-track": (lambda d: write_mp4(d / "silent.mp4", 1.0, sample_rate=None), "no audio track"),
    "no-video-track": (lambda d: write_wav(d / "sound.wav", 1.0, 16000, 1), "no video track"),
    "zero-length": (lambda d: _zero_packet_mp4(d / "zero.mp4"), "no (video|audio) track|zero"),
}


@pytest.mark.parametrize("kind", BAD_MEDIA)
def test_bad_media_raise_naming_the_file(tmp_path: Path, kind: str) -> None:
    make, problem = BAD_MEDIA[kind]
    path = make(tmp_path)
    with pytest.raises(MediaError, match=problem) as error:
        load_audio_visual(path)
    assert str(error.value).startswith(str(path))


def test_zero_length_audio_beside_a_video(tmp_path: Path) -> None:
    video = write_mp4(tmp_path / "v.mp4", 1.0, sample_rate=None)
    audio = _header_only_wav(tmp_path / "empty.wav")
    with pytest.raises(MediaError, match="zero-length audio") as error:
        load_audio_visual(video, audio)
    assert str(error.value).startswith(str(audio))


def test_truncated_wav_decodes_what_is_there(tmp_path: Path) -> None:
    path = _truncated(write_wav(tmp_path / "a.wav", 2.0, 16000, 1), 0.5)  # header still says 2 s
    assert abs(len(decode_audio(path)) - 16000) <= 64


# ---- label and list files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\n", "expected '\\[start - end\\]"),  # no [v, a, d]
        ("[6.2901 8.2357]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n", "expected '\\[start - end\\]"),
        ("Neutral;\t()\n", "expected '\\[start - end\\]"),
        ("[6.2901 - 8.2357]\tSes01F_impro01_F000\tjoy\t[2.5, 2.5, 2.5]\n", "emotion 'joy' is not one of"),
        ("[8.2 - 6.2]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n", "empty or negative time range"),
        ("[6.2 - 6.2]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n", "empty or negative time range"),
        ("[6.2 - 8.2]\tSes01F_impro02_F000\tneu\t[2.5, 2.5, 2.5]\n", "does not belong to dialog Ses01F_impro01"),
        ("[6.2 - 8.2]\tturn7\tneu\t[2.5, 2.5, 2.5]\n", "is not Ses0N"),
    ],
)
def test_malformed_emo_evaluation_lines(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "Ses01F_impro01.txt"
    path.write_text(HEADER + block(1.0, 2.0, "Ses01F_impro01_M000", "ang") + line)
    bad_line = len((HEADER + block(1.0, 2.0, "Ses01F_impro01_M000", "ang")).splitlines()) + 1
    with pytest.raises(DatasetError, match=problem) as error:
        read_emo_evaluation(path, 1)
    assert str(error.value).startswith(f"{path}:{bad_line}:")


def test_turn_from_another_session(tmp_path: Path) -> None:
    path = tmp_path / "Ses02F_impro01.txt"
    path.write_text(HEADER + block(1.0, 2.0, "Ses02F_impro01_M000", "ang"))
    with pytest.raises(DatasetError, match="not from Session1"):
        read_emo_evaluation(path, 1)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("03-01-09-01-01-01-01.wav", "emotion code 09"),
        ("04-01-01-01-01-01-01.wav", "modality code 04"),
        ("03-01-01-01-01-01-25.wav", "actor code 25"),
        ("03-01-01-02-01-01-01.wav", "neutral .* no strong intensity"),
        ("03-02-08-01-01-01-01.wav", "song .* no surprised"),
        ("03-01-01-01-01-01.wav", "seven two-digit fields"),
        ("01-01-01-01-01-01-01.wav", "should be a .mp4 file"),
    ],
)
def test_malformed_ravdess_names(tmp_path: Path, name: str, problem: str) -> None:
    path = tmp_path / "Actor_01" / name
    path.parent.mkdir()
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=problem) as error:
        Ravdess(tmp_path).utterances()
    assert str(error.value).startswith(str(path))


def test_ravdess_file_in_the_wrong_actor_folder(tmp_path: Path) -> None:
    path = tmp_path / "Actor_02" / "03-01-01-01-01-01-01.wav"
    path.parent.mkdir()
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="file of actor 01 inside folder Actor_02"):
        parse_filename(path)


def test_unknown_speaker_and_unknown_key_in_a_trial_list(tmp_path: Path) -> None:
    for key in ("id10001/vidA/00001", "id10002/vidB/00001"):
        (tmp_path / "mp4" / f"{key}.mp4").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mp4" / f"{key}.mp4").write_bytes(b"")
    trials = tmp_path / "veri_test.txt"
    trials.write_text("1 id10001/vidA/00001.wav id10001/vidA/00001.wav\n0 id10001/vidA/00001.wav id10999/x/00001.wav\n")
    with pytest.raises(DatasetError, match="unknown speaker id10999") as error:
        VoxCeleb(tmp_path).trials()
    assert str(error.value).startswith(f"{trials}:2:")
    trials.write_text("0 id10001/vidA/00001.wav id10002/vidB/00009.wav\n")
    with pytest.raises(DatasetError, match="key id10002/vidB/00009 is not an utterance") as error:
        VoxCeleb(tmp_path).trials()
    assert str(error.value).startswith(f"{trials}:1:")


def test_audio_only_key_in_a_trial_list(tmp_path: Path) -> None:
    (tmp_path / "mp4" / "id10001" / "vidA").mkdir(parents=True)
    (tmp_path / "mp4" / "id10001" / "vidA" / "00001.mp4").write_bytes(b"")
    (tmp_path / "wav" / "id10002" / "vidB").mkdir(parents=True)
    (tmp_path / "wav" / "id10002" / "vidB" / "00001.wav").write_bytes(b"")
    (tmp_path / "veri_test.txt").write_text("0 id10001/vidA/00001.wav id10002/vidB/00001.wav\n")
    with pytest.raises(DatasetError, match="id10002/vidB/00001 has audio but no video"):
        VoxCeleb(tmp_path).trials()
    assert len(VoxCeleb(tmp_path, audio_only_ok=True).trials()) == 1


# ---- duplicate keys ------------------------------------------------------------------------------


def test_duplicate_ravdess_clip_names_both_files(tmp_path: Path) -> None:
    first = tmp_path / "Audio_Speech_Actors_01-24" / "Actor_01" / "03-01-05-01-01-01-01.wav"
    second = tmp_path / "Actor_01" / "03-01-05-01-01-01-01.wav"  # the same zip unpacked twice
    for path in (first, second):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    with pytest.raises(DatasetError, match="duplicate") as error:
        Ravdess(tmp_path, audio_only_ok=True).utterances()
    assert str(first) in str(error.value) and str(second) in str(error.value)


def test_duplicate_iemocap_turn_names_both_places(tmp_path: Path) -> None:
    write_session(tmp_path, 1, video=False)
    labels = tmp_path / "Session1" / "dialog" / "EmoEvaluation"
    (labels / "Ses01F_impro01.txt").write_text(
        (labels / "Ses01F_impro01.txt").read_text() + block(3.7, 3.9, "Ses01F_impro01_F000", "hap")
    )
    with pytest.raises(DatasetError, match="duplicate turn Ses01F_impro01_F000, first at .*Ses01F_impro01.txt:3"):
        Iemocap(tmp_path, audio_only_ok=True).utterances()


# ---- stage 0: stop at the first bad utterance, or skip and record it ------------------------------


@pytest.fixture()
def voxceleb_tree(tmp_path: Path) -> Path:
    """Two good mp4s, one corrupt and one without an audio track."""
    root = tmp_path / "vox"
    for key in ("id10001/vidA/00001", "id10001/vidA/00002", "id10002/vidB/00001", "id10002/vidB/00002"):
        (root / "mp4" / key).parent.mkdir(parents=True, exist_ok=True)
    write_mp4(root / "mp4" / "id10001/vidA/00001.mp4", 1.0)
    write_mp4(root / "mp4" / "id10002/vidB/00001.mp4", 1.0)
    (root / "mp4" / "id10001/vidA/00002.mp4").write_bytes(b"\0" * 4000)
    write_mp4(root / "mp4" / "id10002/vidB/00002.mp4", 1.0, sample_rate=None)
    (root / "iden_split.txt").write_text(
        "1 id10001/vidA/00001.wav\n3 id10001/vidA/00002.wav\n1 id10002/vidB/00001.wav\n3 id10002/vidB/00002.wav\n"
    )
    return root


def test_prepare_stops_at_the_first_bad_file(voxceleb_tree: Path, tmp_path: Path) -> None:
    from stages.prepare import PrepareConfig, run

    cfg = PrepareConfig(root=voxceleb_tree, run_dir=tmp_path / "run", num_workers=0, face_size=16)
    with pytest.raises(MediaError, match="00002.mp4: cannot open") as error:
        run(cfg)
    assert "--on-error skip" in str(error.value)


def test_prepare_skips_and_records_every_bad_file(voxceleb_tree: Path, tmp_path: Path) -> None:
    from stages.prepare import PrepareConfig, face_store_path, run, spectrogram_store_path

    cfg = PrepareConfig(root=voxceleb_tree, run_dir=tmp_path / "run", num_workers=0, face_size=16, on_error="skip")
    out = run(cfg)
    with open(out / "skipped.tsv", newline="") as handle:
        skipped = {row["key"]: row["reason"] for row in csv.DictReader(handle, delimiter="\t")}
    assert set(skipped) == {"id10001/vidA/00002", "id10002/vidB/00002"}
    assert "cannot open" in skipped["id10001/vidA/00002"] and "no audio track" in skipped["id10002/vidB/00002"]
    for path in (face_store_path(out, cfg.store), spectrogram_store_path(out, cfg.store)):
        store = open_store(path)
        assert sorted(store.keys) == ["id10001/vidA/00001", "id10002/vidB/00001"]  # nothing of a bad file
        store.close()
