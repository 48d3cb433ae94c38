"""What the sweep tests' stand-in runners write: the parts of a metrics.json the sweep reads.

A plain helper module, not a fixture in conftest.py: the stand-in notebook of tests/test_sweep.py
runs in a papermill kernel (another process), which imports `fake_metrics` from here by name.
"""


def fake_metrics(pq: float, scheme: bool = False, external: bool = True) -> dict:
    """The parts of a metrics.json (uni_seg.metrics/4) the sweep reads."""
    def block(value):
        return {"dataset": {"pq": value, "f1": value + 0.05, "ap50": value - 0.05, "aji": value - 0.1,
                            "per_class_pq": {"uninfected RBC": {"tp": 90, "fp": 5, "fn": 5},
                                             "infected RBC": {"tp": 6, "fp": 2, "fn": 2}}},
                "per_image_mean": {"count_error": 2.0, "count_abs_error": 3.0, "parasitemia_mae": 0.01}}
    ext = {"methods": {"model": {"recall": {"RBC": pq - 0.2, "WBC": 0.9, "Platelets": 0.1, "all": pq - 0.25},
                                 "ap50": 0.3, "count_error": 5.0, "count_abs_error": 6.0},
                       "baseline": {"recall": {"RBC": 0.627, "WBC": 0.92, "Platelets": 0.175, "all": 0.616},
                                    "ap50": 0.286, "count_error": 12.6, "count_abs_error": 12.7}}}
    return {"schema": "uni_seg.metrics/4", **block(pq), "baseline": {"method": "otsu", **block(0.7671)},
            "class_names": ["background", "uninfected RBC", "infected RBC", "leukocyte"],
            "class_scheme": {"name": "bbbc041", "infected_classes": [2]} if scheme else None,
            "external": ext if external else None}
