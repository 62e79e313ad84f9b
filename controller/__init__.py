"""The Deft priority controller.

Watches KServe InferenceServices and TrainedModels that the Deft runtime serves, turns their
``deft.dev/*`` annotations into the priority table (``scheduler.priority.PriorityTable``) and
writes it into ConfigMap ``deft-priorities`` (key ``priorities.yaml``) in each namespace.

Layout: ``annotations`` parses annotation values, ``objects`` turns raw Kubernetes objects
into typed observations, ``reconcile`` is the pure observed -> desired function, ``informer``
and ``loop`` are the API layer (list + watch + resync + backoff), ``kube`` adapts the
Kubernetes Python client, ``dryrun`` and ``cli`` are the command line. Importing the package
does no work.
"""
