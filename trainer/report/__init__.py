"""A run's report (`unmix-swav report`): collect.py reads the step folders, figures.py draws the curves,
render.py writes the page, build.py is the command."""
