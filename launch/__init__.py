"""The launcher layer: one typed job spec for every distributed trainer command, and what runs it.

trainer/ <- launch/ <- components/ <- pipeline/: components import this package, never the DAG.
`launch.torchrun` runs inside the job's pods and imports only torch and trainer; the rest runs in the
pipeline step that launches the job (or on this machine for local runs).
"""
