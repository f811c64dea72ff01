"""The paper's claims (and what the controls ask) as verdicts from paired intervals: reproduced, not reproduced
or inconclusive, each with the numbers it rests on.

A claim "X is better than Y" is reproduced when the paired interval of X − Y lies above zero, not reproduced when
it lies below, inconclusive when it contains zero. "No harm" is reproduced when the interval's lower end is above
−NO_HARM_MARGIN points (the data rule out a harm larger than that), not reproduced when it lies below zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.evidence.stats import Paired, direction, format_paired, paired

NO_HARM_MARGIN = 0.03  # 3 points of top-1: a harm this small is within what one seed's spread hides
MODERATE = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str
    evidence: str

    def as_dict(self) -> dict:
        return {"claim": self.claim, "verdict": self.verdict, "evidence": self.evidence}


def better(difference: Paired | None) -> str:
    return {"higher": "reproduced", "lower": "not reproduced", "unclear": "inconclusive",
            "missing": "not measured yet"}[direction(difference)]


def lower(difference: Paired | None) -> str:
    """The verdict on "X is lower than Y" (EER, a harm) from the interval of X − Y."""
    return {"lower": "reproduced", "higher": "not reproduced", "unclear": "inconclusive",
            "missing": "not measured yet"}[direction(difference)]


def no_harm(difference: Paired | None) -> str:
    if difference is None:
        return "not measured yet"
    if difference.high < 0:
        return "not reproduced"
    return "reproduced" if difference.low > -NO_HARM_MARGIN else "inconclusive"


def _top1(results, study, method: str, lam: float) -> dict[int, float]:
    return results.values(study, method, lam, "top1")


def validated_gain(results, study, method: str, key: str = "top1", level: str | None = None):
    """(λ chosen on validation, paired change of `key` there against λ = 0); (None, None) before any finished."""
    lam = results.chosen_lambda(study, method, level=level)
    return lam, (results.change(study, method, lam, key, level=level) if lam is not None else None)


def _at(lam: float | None) -> str:
    return f"λ = {'—' if lam is None else f'{lam:g}'} (validation)"


def claims(results) -> list[Verdict]:
    """Every verdict the spec's studies can give (`results`: pipeline.evidence.report.Results)."""
    spec, verdicts = results.spec, []
    for main in spec.by_role("main"):
        verdicts += _main_claims(results, main)
    for control in spec.by_role("control"):
        main = spec.study(control.baseline)
        kind = control.options.get("control")
        for lam in control.lambdas:
            real_minus = paired(results.values(main, "proposed", lam, "top1"),
                                results.values(control, "proposed", lam, "top1"))
            verdicts.append(Verdict(
                f"Control `{kind}`, λ = {lam:g}: the real per-utterance teacher targets beat {kind} targets",
                better(real_minus), f"real − {kind}: {format_paired(real_minus)}; {kind} vs audio only: "
                f"{format_paired(results.change(control, 'proposed', lam, 'top1'))}"))
    for null in spec.by_role("null"):
        lam, gain = validated_gain(results, null, "proposed")
        verdicts.append(Verdict(
            f"Null corpus ({null.name}): with nothing shared but the label, distillation (proposed) does not help",
            {"higher": "not reproduced", "lower": "reproduced", "unclear": "reproduced",
             "missing": "not measured yet"}[direction(gain)],
            f"{_at(lam)}: Δ top-1 vs audio only {format_paired(gain)} (an interval containing 0 or below it: no gain)"))
    for weak in spec.by_role("weak-teacher"):
        verdicts += _weak_claims(results, weak)
    for emotion in spec.by_role("emotion"):
        lam, gain = validated_gain(results, emotion, emotion.methods[0], "ua")
        verdicts.append(Verdict(f"Emotion ({emotion.name}, leave-one-speaker-out): distillation raises UA",
                                better(gain), f"{_at(lam)}, paired over folds: Δ UA {format_paired(gain)}"))
    for sequential in spec.by_role("sequential"):
        for level in sequential.levels:
            lam, gain = validated_gain(results, sequential, "proposed", level=level)
            verdicts.append(Verdict(f"Sequential level `{level}` ({sequential.name}): distillation beats audio alone",
                                    better(gain), f"{_at(lam)}: Δ {format_paired(gain)}"))
    return verdicts


def _main_claims(results, main) -> list[Verdict]:
    verdicts = []
    lam, gain = validated_gain(results, main, "proposed")
    verdicts.append(Verdict(f"Main corpus ({main.name}): the proposed method beats the audio-only student (top-1)",
                            better(gain), f"{_at(lam)}: Δ {format_paired(gain)}"))
    eer_gain = results.change(main, "proposed", lam, "eer") if lam is not None else None
    verdicts.append(Verdict(f"Main corpus ({main.name}): the proposed method lowers verification EER",
                            lower(eer_gain), f"{_at(lam)}: Δ EER {format_paired(eer_gain)} (negative is better)"))
    moderate = results.chosen_lambda(main, "proposed", [lam for lam in main.lambdas if lam in MODERATE])
    if moderate is not None and 1.0 in main.lambdas:
        middle = paired(_top1(results, main, "proposed", moderate), _top1(results, main, "proposed", 1.0))
        verdicts.append(Verdict("The proposed method helps most at moderate λ (better than at λ = 1)", better(middle),
                                f"λ = {moderate:g} (validation, among {MODERATE}) − λ = 1: {format_paired(middle)}"))
    for baseline in ("soft-label", "multitask"):
        if baseline not in main.methods or lam is None:
            continue
        other = results.chosen_lambda(main, baseline)
        versus = paired(_top1(results, main, "proposed", lam), _top1(results, main, baseline, other)) \
            if other is not None else None
        verdicts.append(Verdict(f"The proposed method beats the {baseline} baseline (each at its validation λ)",
                                better(versus), f"proposed λ = {lam:g} − {baseline} λ = "
                                f"{'—' if other is None else f'{other:g}'}: {format_paired(versus)}"))
        low, high = min(x for x in main.lambdas if x > 0), max(main.lambdas)
        worse = paired(_top1(results, main, baseline, low), _top1(results, main, baseline, high))
        verdicts.append(Verdict(f"The {baseline} baseline gets worse as λ grows", better(worse),
                                f"λ = {low:g} − λ = {high:g}: {format_paired(worse)}"))
    return verdicts


def _weak_claims(results, weak) -> list[Verdict]:
    verdicts = []
    lam, gain = validated_gain(results, weak, "proposed")
    teacher = results.teacher_accuracy(weak.corpus)
    student = results.stat(weak, "proposed", 0.0, "top1")
    situation = (f"teacher {100 * teacher:.1f} %, audio only {100 * student[0]:.1f} %"
                 if teacher is not None and student is not None else "teacher or baseline not measured yet")
    verdicts.append(Verdict(f"Weak teacher ({weak.name}; {situation}): the proposed method does no harm",
                            no_harm(gain), f"{_at(lam)}: Δ {format_paired(gain)}; reproduced when a harm above "
                            f"{100 * NO_HARM_MARGIN:.0f} points is ruled out"))
    high = max(weak.lambdas)
    for baseline in ("soft-label", "multitask"):
        if baseline in weak.methods:
            harm = results.change(weak, baseline, high, "top1")
            verdicts.append(Verdict(f"Weak teacher: the {baseline} baseline is harmed (λ = {high:g})", lower(harm),
                                    f"Δ vs audio only: {format_paired(harm)}"))
    return verdicts
