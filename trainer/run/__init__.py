"""The run kit every command uses: one error boundary, one resume check, one run lock, one metrics writer,
one logging set-up. Nothing here knows about SwAV, evaluation or DETR."""
