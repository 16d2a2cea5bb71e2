"""Evaluation of taggers on dataset splits: metrics, threshold calibration, reports (numpy only; no torch).

    from animetagnet.evaluation import metrics          # pure-numpy metric functions
    animetagnet evaluate --model MODEL --data DATASET_DIR --split test --report out/
"""
