"""A synthetic talking-face corpus written as real H.264/AAC mp4 files in the VoxCeleb1 (or RAVDESS) layout.

Version 1 (`corpus_version` 1, the default without a preset): speakers differ in face (shape, colours, hair,
eyes, brows, nose, beard, glasses; `face`) and in voice (pitch, formants, speaking rate, breathiness; `voice`),
drawn independently. The mouth opens with the amplitude of the utterance's own clean speech, which links the two
streams. `corpus` plans the utterances and writes the files; `config` holds `SynthConfig`.

Version 2 (`--preset correlated|null|weak-teacher|emotion|emotion-null`, or `--corpus-version 2`): part of each
speaker's latent is rendered into both face and voice (`latent`), a per-utterance arousal track drives both, video
nuisance sets the teacher's difficulty (`degrade`), splits are by whole video, and an emotion task writes arousal
classes in the RAVDESS layout (`corpus_v2`).
"""

from pipeline.datasets.synthetic.config import GENERATOR_VERSION, PRESETS, SynthConfig
from pipeline.datasets.synthetic.corpus import synthesize, synthesize_or_reuse
from pipeline.datasets.synthetic.face import Face
from pipeline.datasets.synthetic.voice import Voice

__all__ = ["GENERATOR_VERSION", "PRESETS", "Face", "SynthConfig", "Voice", "synthesize", "synthesize_or_reuse"]
