"""The radar domain: where micro-Doppler spectrograms come from and what in them is physics.

    ldm.radar.simulator   a walking-person radar simulator: the built-in data set (docs/microdoppler.md);
                          python -m ldm.radar.simulator writes a data folder
    ldm.radar.chain       raw FMCW I/Q to spectrograms (range FFT, MTI, STFT) and the readers of public radar data
                          sets; python -m ldm.radar converts them (docs/radar.md)
    ldm.radar.physics     kinematic features of a spectrogram (torso velocity, envelopes, bandwidth, cadence)
    ldm.radar.augment     classic spectrogram augmentation, and filters for generated samples (docs/augmentation.md)
    ldm.radar.identity    the identity classifier behind every identity figure (docs/evaluation.md)

Nothing here imports the models; the models know nothing of radar.
"""
