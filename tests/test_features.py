"""The time grid: 1 s = 100 spectrogram frames = 25 video frames; crops and segments line up."""

import numpy as np
import pytest
import torch

from pipeline.features import (
    SEGMENT_SPEC_FRAMES,
    SEGMENT_VIDEO_FRAMES,
    LogSpectrogram,
    n_segments,
    random_crop,
    repeat_pad,
    segment_means,
)


def test_one_second_is_100_spectrogram_frames_and_25_video_frames():
    assert SEGMENT_SPEC_FRAMES == 100 and SEGMENT_VIDEO_FRAMES == 25
    video_frames = 75  # 3 s at 25 fps
    audio = torch.randn(video_frames * 640)  # 640 samples per video frame at 16 kHz
    spectrogram = LogSpectrogram()(audio)
    assert spectrogram.shape == (4 * video_frames, 257)
    assert torch.isfinite(spectrogram).all()


def test_crop_ranges_cover_the_same_time_in_both_streams():
    generator = torch.Generator().manual_seed(0)
    for n_video_frames in (10, 124, 125, 126, 200, 777):
        for _ in range(20):
            crop = random_crop(n_video_frames, 5, generator)
            (spec_start, spec_stop), (video_start, video_stop) = crop.spec_range, crop.video_range
            assert spec_start == 4 * video_start and spec_stop == 4 * video_stop
            assert spec_stop - spec_start == 500 and video_stop - video_start == 125
            assert video_start % 25 == 0  # on the 1 s grid
            if n_video_frames >= 125:
                assert video_stop <= n_video_frames  # long utterances: the crop lies inside
            else:
                assert video_start == 0  # short ones start at 0 and are repeat-padded


def test_every_start_on_the_grid_is_reachable():
    generator = torch.Generator().manual_seed(1)
    starts = {random_crop(200, 5, generator).start_segment for _ in range(200)}
    assert starts == {0, 1, 2, 3}  # 8 whole seconds, 5 s crops


def test_repeat_pad_tiles_and_truncates():
    rows = np.arange(3)[:, None]
    assert repeat_pad(rows, 7)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert repeat_pad(np.arange(10)[:, None], 4)[:, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        repeat_pad(np.zeros((0, 2)), 3)


def test_segment_means_include_the_partial_last_second():
    frames = np.arange(60, dtype=np.float32)[:, None].repeat(2, axis=1)  # 2.4 s
    means = segment_means(frames)
    assert n_segments(60) == 3 and means.shape == (3, 2)
    np.testing.assert_allclose(means[:, 0], [12.0, 37.0, 54.5])
