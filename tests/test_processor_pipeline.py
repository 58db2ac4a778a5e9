"""AltCLIPProcessor, the zero-shot pipeline, load(), and the seed documents' usage snippets."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import altclip
from altclip import AltCLIPProcessor, AutoConfig, AutoModel, AutoProcessor
from altclip.templates import TEMPLATES, guess_language

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"


def test_processor_matches_reference(checkpoint):
    import transformers

    ours = AltCLIPProcessor.from_pretrained(checkpoint)
    ref = transformers.AltCLIPProcessor.from_pretrained(str(checkpoint))
    texts = ["一只猫", "a photo of a dog", "Фотография кошки"]
    images = [Image.open(PHOTOS / "cat.jpg"), Image.open(PHOTOS / "coffee.jpg")]
    a = ours(text=texts, images=images, return_tensors="pt", padding=True)
    b = ref(text=texts, images=images, return_tensors="pt", padding=True)
    assert set(a) == {"input_ids", "attention_mask", "pixel_values"}
    assert torch.equal(a.input_ids, b["input_ids"]) and torch.equal(a.attention_mask, b["attention_mask"])
    assert (a.pixel_values - b["pixel_values"]).abs().max() <= 1e-5
    moved = a.to("cpu", dtype=torch.float16)
    assert moved.pixel_values.dtype == torch.float16 and moved.input_ids.dtype == torch.long
    assert ours.batch_decode(a.input_ids, skip_special_tokens=True)[1] == "a photo of a dog"


def test_auto_classes(checkpoint, tmp_path):
    assert type(AutoModel.from_pretrained(checkpoint)).__name__ == "AltCLIPModel"
    assert type(AutoConfig.from_pretrained(checkpoint)).__name__ == "AltCLIPConfig"
    assert isinstance(AutoProcessor.from_pretrained(checkpoint), AltCLIPProcessor)
    model = AutoModel.from_pretrained(checkpoint)
    model.text_model.save_pretrained(tmp_path / "text")
    assert type(AutoModel.from_pretrained(tmp_path / "text")).__name__ == "AltCLIPTextModel"
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="is a 'bert' checkpoint; this package loads AltCLIP checkpoints only"):
        AutoModel.from_pretrained(tmp_path / "bert")


def test_load_and_processor_save(checkpoint, tmp_path):
    model, processor = altclip.load(checkpoint)
    assert not model.training and isinstance(processor, AltCLIPProcessor)
    processor.save_pretrained(tmp_path)
    again = AltCLIPProcessor.from_pretrained(tmp_path)
    assert again(text=["猫"])["input_ids"] == processor(text=["猫"])["input_ids"]


def test_pipeline_matches_transformers_pipeline(checkpoint):
    import transformers

    labels = ["猫", "a dog", "一辆红色的车", "кофе"]
    ours = altclip.pipeline("zero-shot-image-classification", model=checkpoint)
    ref = transformers.pipeline("zero-shot-image-classification", model=str(checkpoint))
    image = Image.open(PHOTOS / "cat.jpg")
    a, b = ours(image, candidate_labels=labels), ref(image, candidate_labels=labels)
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) < 1e-5
    assert a == sorted(a, key=lambda r: -r["score"]) and abs(sum(r["score"] for r in a) - 1) < 1e-5
    many = ours([image, str(PHOTOS / "coffee.jpg")], candidate_labels=labels, top_k=2)
    assert len(many) == 2 and all(len(r) == 2 for r in many)


def test_prompt_ensemble_matches_manual_average_with_reference(checkpoint):
    """The ensemble classifier equals averaging the reference model's normalised prompt embeddings."""
    import transformers

    labels = ["猫", "咖啡"]
    ours = altclip.pipeline(model=checkpoint)
    ref = transformers.AltCLIPModel.from_pretrained(str(checkpoint)).eval()
    tokenizer = transformers.XLMRobertaTokenizer.from_pretrained(str(checkpoint))
    rows = []
    with torch.no_grad():
        for label in labels:
            batch = tokenizer([t.format(label) for t in TEMPLATES["zh"]], padding=True, return_tensors="pt")
            e = ref.get_text_features(**batch).pooler_output
            rows.append(torch.nn.functional.normalize(torch.nn.functional.normalize(e, dim=-1).mean(0), dim=-1))
    expected = torch.stack(rows)
    assert (ours.classifier(labels, templates="zh") - expected).abs().max() < 1e-5
    # "auto" picks each label's template set by its script.
    mixed = ours.classifier(["猫", "cat"], templates="auto")
    assert (mixed[0] - ours.classifier(["猫"], templates="zh")[0]).abs().max() < 1e-6
    assert (mixed[1] - ours.classifier(["cat"], templates="en")[0]).abs().max() < 1e-6
    result = ours(Image.open(PHOTOS / "coffee.jpg"), candidate_labels=labels, templates="zh")
    assert {r["label"] for r in result} == set(labels)


def test_pipeline_bad_input(checkpoint):
    pipe = altclip.pipeline(model=checkpoint)
    with pytest.raises(ValueError, match="candidate_labels is empty"):
        pipe(PHOTOS / "cat.jpg", candidate_labels=[])
    with pytest.raises(ValueError, match="Label 1 is empty"):
        pipe(PHOTOS / "cat.jpg", candidate_labels=["cat", "  "])
    with pytest.raises(ValueError, match="has no '{}'"):
        pipe(PHOTOS / "cat.jpg", candidate_labels=["cat"], templates=["a photo"])
    with pytest.raises(altclip.ImageError, match=r"Image 1 \(.*nothing\.jpg\): no such file"):
        pipe([PHOTOS / "cat.jpg", "/nothing.jpg"], candidate_labels=["cat"])
    with pytest.raises(ValueError, match="Unsupported task"):
        altclip.pipeline("image-to-text", model=checkpoint)


def test_guess_language():
    assert [guess_language(t) for t in ("猫", "ねこ", "고양이", "кошка", "قطة", "cat")] == [
        "zh",
        "ja",
        "ko",
        "ru",
        "ar",
        "en",
    ]


# --- the seeds' usage snippets ----------------------------------------------------------------------------------
# Copied from the transformers AltCLIP documentation (../shared/seeds). Only the import line changes; the model id
# and image URLs are pointed at a local checkpoint and a local web server, since nothing can be downloaded here.

SNIPPET_PIPELINE = """
import torch
from transformers import pipeline

pipeline = pipeline(task="zero-shot-image-classification", model="kakaobrain/align-base", dtype="auto")
candidate_labels = ["a photo of a dog", "a photo of a cat", "a photo of a person"]
result = pipeline("https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/pipeline-cat-chonk.jpeg", candidate_labels=candidate_labels)
print(result)
"""

SNIPPET_AUTOMODEL = """
import torch
import requests
from PIL import Image
from transformers import AltCLIPModel, AutoProcessor

model = AltCLIPModel.from_pretrained("BAAI/AltCLIP", dtype="auto")
processor = AutoProcessor.from_pretrained("BAAI/AltCLIP")

url = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/pipeline-cat-chonk.jpeg"
image = Image.open(requests.get(url, stream=True).raw)

inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="pt", padding=True)

outputs = model(**inputs)
logits_per_image = outputs.logits_per_image
probs = logits_per_image.softmax(dim=1)

labels = ["a photo of a cat", "a photo of a dog"]
for label, prob in zip(labels, probs[0]):
    print(f"{label}: {prob.item():.4f}")
"""

SNIPPET_BF16 = """
import torch
import requests
from PIL import Image
from transformers import AltCLIPModel, AltCLIPProcessor

model = AltCLIPModel.from_pretrained("BAAI/AltCLIP", dtype=torch.bfloat16)
processor = AltCLIPProcessor.from_pretrained("BAAI/AltCLIP")

url = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/pipeline-cat-chonk.jpeg"
image = Image.open(requests.get(url, stream=True).raw)

inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="pt", padding=True)

outputs = model(**inputs)
logits_per_image = outputs.logits_per_image  # this is the image-text similarity score
probs = logits_per_image.softmax(dim=1)  # we can take the softmax to get the label probabilities

labels = ["a photo of a cat", "a photo of a dog"]
for label, prob in zip(labels, probs[0]):
    print(f"{label}: {prob.item():.4f}")
"""

SNIPPET_FEATURES = """
from PIL import Image
import requests
from transformers import AutoProcessor, AltCLIPModel

model = AltCLIPModel.from_pretrained("BAAI/AltCLIP")
processor = AutoProcessor.from_pretrained("BAAI/AltCLIP")
url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)
inputs = processor(images=image, return_tensors="pt")
image_features = model.get_image_features(**inputs)
inputs = processor(text=["a photo of a cat", "a photo of a dog"], padding=True, return_tensors="pt")
text_features = model.get_text_features(**inputs)
print(tuple(image_features.shape), tuple(text_features.shape))
"""

SNIPPET_TOWERS = """
from PIL import Image
import requests
from transformers import AutoProcessor, AltCLIPTextModel, AltCLIPVisionModel

model = AltCLIPTextModel.from_pretrained("BAAI/AltCLIP")
processor = AutoProcessor.from_pretrained("BAAI/AltCLIP")
texts = ["it's a cat", "it's a dog"]
inputs = processor(text=texts, padding=True, return_tensors="pt")
outputs = model(**inputs)
last_hidden_state = outputs.last_hidden_state
pooled_output = outputs.pooler_output  # pooled CLS states

model = AltCLIPVisionModel.from_pretrained("BAAI/AltCLIP")
url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)
inputs = processor(images=image, return_tensors="pt")
outputs = model(**inputs)
print(tuple(pooled_output.shape), tuple(outputs.pooler_output.shape))
"""

SNIPPET_CONFIG = """
from transformers import AltCLIPConfig, AltCLIPModel, AltCLIPTextConfig, AltCLIPVisionConfig
configuration = AltCLIPConfig()
config_text = AltCLIPTextConfig()
config_vision = AltCLIPVisionConfig()
config = AltCLIPConfig.from_text_vision_configs(config_text, config_vision)
print(config.projection_dim, config.text_config.hidden_size, config.vision_config.patch_size)
"""


@pytest.fixture(scope="module")
def image_server():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(PHOTOS))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cat.jpg"
    server.shutdown()


def run_snippet(code: str, checkpoint: Path, image_url: str) -> str:
    code = code.replace("from transformers import", "from altclip import")
    code = re.sub(r'"(BAAI/AltCLIP|kakaobrain/align-base)"', repr(str(checkpoint)), code)
    code = re.sub(r'"https?://[^"]+\.(jpe?g)"', repr(image_url), code)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<snippet>", "exec"), {})
    return out.getvalue()


def test_seed_snippet_pipeline(checkpoint, image_server):
    result = eval(run_snippet(SNIPPET_PIPELINE, checkpoint, image_server))
    assert [set(r) for r in result] == [{"score", "label"}] * 3
    assert abs(sum(r["score"] for r in result) - 1) < 1e-5


@pytest.mark.parametrize("snippet", [SNIPPET_AUTOMODEL, SNIPPET_BF16], ids=["automodel", "bf16"])
def test_seed_snippet_similarity(checkpoint, image_server, snippet):
    printed = run_snippet(snippet, checkpoint, image_server)
    probs = [float(x) for x in re.findall(r"^a photo of a (?:cat|dog): (\d\.\d{4})$", printed, re.M)]
    assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-2, printed  # bf16 carries 8 bits of mantissa


def test_seed_snippet_features_and_towers(checkpoint, image_server):
    assert run_snippet(SNIPPET_FEATURES, checkpoint, image_server).split() == ["(1,", "16)", "(2,", "16)"]
    assert run_snippet(SNIPPET_TOWERS, checkpoint, image_server).split() == ["(2,", "24)", "(1,", "32)"]


def test_seed_snippet_config(checkpoint, image_server):
    assert run_snippet(SNIPPET_CONFIG, checkpoint, image_server).split() == ["768", "1024", "32"]


def test_image_url_is_fetched(image_server):
    array = altclip.CLIPImageProcessor()(image_server).pixel_values
    local = altclip.CLIPImageProcessor()(PHOTOS / "cat.jpg").pixel_values
    assert torch.equal(array, local)
    assert np.asarray(altclip.load_image(image_server)).shape == (300, 451, 3)
