"""Fine-tuning jobs as both the API and the worker see them (no torch, no web code):
job and data-set records (``store``), the queue and the enqueue call (``queue``),
where a job's data set lives (``datasets``) and what a job trains (``spec``)."""
