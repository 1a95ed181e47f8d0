"""The experiment runner: arms × labelled counts × seeds, cached cells, statistics, figures.

``anatplane experiment run CONFIG --out DIR`` / ``anatplane experiment report DIR``.
"""
