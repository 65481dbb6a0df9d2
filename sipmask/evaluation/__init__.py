"""Scoring: COCO image AP and YouTube-VIS video AP, from a model or from results files."""
