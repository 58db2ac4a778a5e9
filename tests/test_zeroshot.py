"""One zero-shot question, asked through every entry point (the pipeline, `altclip classify --json`, `POST
/v1/classify` as JSON and as a form, and evaluation) in every templates mode, gets the same scores; and the rules
of templates (only `{}` is special, the label goes in literally)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

import altclip
from altclip import zeroshot
from altclip.cli import build
from altclip.evaluate import zero_shot_classification, zero_shot_scores
from altclip.server import ServerSettings
from serving import running_server

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"
CAT = PHOTOS / "cat.jpg"
LABELS = ["猫", "a dog", "café", "ロケット"]
TEMPLATE_LIST = ["a photo of {}.", "{}, drawn in ink", "{} {}"]
MODES = {"none": "none", "auto": "auto", "language code": "zh", "list": TEMPLATE_LIST, "None": None}


@pytest.fixture(scope="module")
def pipeline(embedder):
    return altclip.ZeroShotImageClassificationPipeline(embedder.model, embedder.processor)


@pytest.fixture(scope="module")
def server(embedder):
    with running_server(ServerSettings(), embedder) as url:
        yield url


def by_label(results) -> dict[str, float]:
    return {r["label"]: r["score"] for r in results}


def assert_same(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    assert max(abs(got[k] - expected[k]) for k in expected) < 1e-5, (got, expected)


@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
def test_every_entry_point_gives_the_same_scores(mode, pipeline, embedder, checkpoint, server, tmp_path):
    templates = MODES[mode]
    expected = by_label(pipeline(CAT, candidate_labels=LABELS, templates=templates))
    assert abs(sum(expected.values()) - 1) < 1e-5

    probs, kept, _ = zero_shot_scores(embedder, [CAT], LABELS, templates)
    assert kept == [0]
    assert_same(dict(zip(LABELS, probs[0].tolist())), expected)

    # The library's classifier builder, with the templates given and with its default when they are None.
    model, processor = embedder.model, embedder.processor
    args = () if templates is None else (templates,)
    classifier = altclip.zero_shot_classifier(model, processor, LABELS, *args)
    image_embeds = altclip.embed_images(model, processor, [CAT])
    probs = zeroshot.scores(image_embeds, classifier, embedder.logit_scale).probs
    assert_same(dict(zip(LABELS, probs[0].tolist())), expected)

    image = base64.b64encode(CAT.read_bytes()).decode()
    answer = httpx.post(f"{server}/v1/classify", json={"image": image, "labels": LABELS, "templates": templates})
    assert answer.status_code == 200, answer.text
    assert_same(by_label(answer.json()["labels"]), expected)

    if isinstance(templates, str):
        form = {"labels": json.dumps(LABELS), "templates": templates}
        answer = httpx.post(f"{server}/v1/classify", files={"image": ("cat.jpg", CAT.read_bytes())}, data=form)
        assert answer.status_code == 200, answer.text
        assert_same(by_label(answer.json()["labels"]), expected)

    if templates is not None:  # the command line names every mode but None, which it does not need
        if isinstance(templates, list):
            (tmp_path / "templates.txt").write_text("\n".join(templates), encoding="utf-8")
            templates = str(tmp_path / "templates.txt")
        labels = [arg for label in LABELS for arg in ("-l", label)]
        result = CliRunner().invoke(
            build(),
            ["classify", str(CAT), *labels, "--templates", templates, "--json", "--top-k", str(len(LABELS))],
            env={"ALTCLIP_MODEL": str(checkpoint)},
        )
        assert result.exit_code == 0, result.output
        assert_same(by_label(json.loads(result.stdout)[0]["labels"]), expected)


def test_evaluation_reports_the_scores_it_ranks_by(embedder, pipeline, tmp_path):
    for label in ("cat", "coffee"):
        (tmp_path / label).mkdir()
        (tmp_path / label / f"{label}.jpg").write_bytes((PHOTOS / f"{label}.jpg").read_bytes())
    result = zero_shot_classification(embedder, tmp_path, templates="en")
    ranked = [
        pipeline(PHOTOS / f"{c}.jpg", candidate_labels=["cat", "coffee"], templates="en")[0] for c in ("cat", "coffee")
    ]
    assert result["metrics"]["acc1"] == sum(r["label"] == c for r, c in zip(ranked, ("cat", "coffee"))) / 2
    assert result["templates"] == len(altclip.templates.TEMPLATES["en"])


def test_templates_none_is_transformers_hypothesis_template():
    assert zeroshot.label_prompts(["cat"]) == [["This is a photo of cat."]]
    assert zeroshot.label_prompts(["cat"], "none") == [["cat"]]
    assert zeroshot.label_prompts(["猫", "cat"], "auto")[0][0] == altclip.templates.TEMPLATES["zh"][0].replace(
        "{}", "猫"
    )


def test_labels_go_into_templates_literally():
    assert zeroshot.label_prompts(["{0} {label} }{"], ["a photo of {}."]) == [["a photo of {0} {label} }{."]]
    assert zeroshot.label_prompts(["x"], ["{} and {}"]) == [["x and x"]]
    for bad in ("a photo of {0}", "a {label}", "{} {{", "a } of {}", "no placeholder"):
        with pytest.raises(ValueError, match="templates must"):
            zeroshot.label_prompts(["cat"], [bad])
    with pytest.raises(ValueError, match="give templates as a list"):
        zeroshot.label_prompts(["cat"], "a photo of {}")


def test_the_service_refuses_bad_templates_with_422(server):
    image = base64.b64encode(CAT.read_bytes()).decode()
    for templates in (["a {label}"], ["{} {{"], "fr_FR", [], [1]):
        answer = httpx.post(f"{server}/v1/classify", json={"image": image, "labels": ["cat"], "templates": templates})
        assert answer.status_code == 422 and "templates must" in answer.json()["detail"], (templates, answer.text)


def test_classifier_cache_is_bounded_and_keyed_by_prompts():
    cache = zeroshot.ClassifierCache(size=2)
    for i in range(3):
        cache.put([[f"p{i}"]], torch.full((1, 2), float(i)))
    assert cache.get([["p0"]]) is None and cache.get([["p2"]]) is not None
