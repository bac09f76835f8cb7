"""Query-tower distillation: the student has fewer layers, moves towards the teacher's query embeddings,
and the job reports the recall it loses against the teacher's product embeddings and the time it saves."""

import numpy as np
import pytest
import torch

from ace_ray import jobs
from ace_ray.model.towers import encode_query_texts, load_towers, save_towers
from ace_ray.train.distill import student_of
from tests.conftest import random_towers

pytestmark = pytest.mark.ray


def test_student_keeps_the_first_layers_of_the_teacher(featurised_shop, tmp_path):
    w, _, store = featurised_shop
    teacher, _ = random_towers(w, store, tmp_path / "teacher")
    student = student_of(teacher, 1)
    assert len(student.encoder.bert.encoder.layer) == 1 and len(teacher.encoder.bert.encoder.layer) == 2
    a, b = student.encoder.bert.encoder.layer[0], teacher.encoder.bert.encoder.layer[0]
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(ValueError, match="between 1 and 1"):
        student_of(teacher, 2)


def test_distill_job_learns_the_teacher_and_reports_recall_lost(featurised_shop, tmp_path):
    w, root, store = featurised_shop
    teacher, _ = random_towers(w, store, tmp_path / "random")
    with torch.no_grad():  # a teacher whose last layer matters, so the copied first layer starts far off
        for p in teacher.encoder.bert.encoder.layer[1].parameters():
            p.mul_(4.0)
    teacher_dir = tmp_path / "teacher"
    meta = {
        k: v
        for k, v in load_towers(tmp_path / "random")[1].items()
        if k in ("feature_manifest", "preset", "text")
    }
    save_towers(teacher, teacher_dir, w.data.text.tokenizer, meta)
    w.workspace = str(tmp_path)
    w.finetune.distill.layers, w.finetune.distill.epochs, w.finetune.distill.lr = 1, 8, 1e-3
    res = jobs.distill(w, model_dir=teacher_dir)
    # Copying the first layer is the start; training moves the student closer to the teacher.
    assert res["final_distance"] < 0.7 * res["initial_distance"], res
    assert res["recall_lost"] == pytest.approx(res["teacher"]["recall@100"] - res["student"]["recall@100"])
    student, info = load_towers(res["model_dir"])
    assert info["query_layers"] == 1 and len(student.encoder.bert.encoder.layer) == 1
    teacher, _ = load_towers(teacher_dir)
    q = ["red dress", "black leather boots"]
    cos = (encode_query_texts(student, q, info["text"]) * encode_query_texts(teacher, q, info["text"])).sum(1)
    assert np.all(cos > 0.5)
