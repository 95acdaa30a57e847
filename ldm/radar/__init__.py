"""The radar domain: where micro-Doppler spectrograms come from and what in them is physics.

    ldm.radar.kinematics  the walking body: Person, Draws (one walk's nuisance), the Boulic-Thalmann gait model,
                          the feet on the floor, the body's points in the world (docs/microdoppler.md)
    ldm.radar.echo        what a radar sees of them: ellipsoid scatterers, the classic slow-time echo and its STFT,
                          raw FMCW I/Q rendered through the chain (the realistic profile)
    ldm.radar.simulator   the built-in data set: people, sessions, profiles, simulate_dataset / write_dataset;
                          python -m ldm.radar.simulator writes a data folder
    ldm.radar.chain       the signal chain of real and simulated I/Q: range FFT, MTI, range gate, STFT, velocity
                          axis (docs/radar.md)
    ldm.radar.readers     readers of the Glasgow .dat/.mat, IDRad .hdf5 and .npy I/Q files (and a .dat writer)
    ldm.radar.datasets    the converter: python -m ldm.radar turns those files into a training folder
                          (docs/radar.md)
    ldm.radar.physics     kinematic features of a spectrogram (torso velocity, envelopes, bandwidth, cadence)
    ldm.radar.augment     classic spectrogram augmentation, and filters for generated samples (docs/augmentation.md)
    ldm.radar.identity    the identity classifier behind every identity figure (docs/evaluation.md)

Imports run one way: kinematics and chain need only numpy; echo builds on both; readers on chain's radar; simulator and datasets
add the command line (ldm.cli, no torch). Nothing here imports the models; the models know nothing of radar.
"""
