"""Learning-rate-scheduler experiments: data, model, schedules, training, tracking, figures."""
